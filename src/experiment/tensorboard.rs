//! TensorBoard event files, written by ftexp itself. A file is a sequence of TFRecords (the length as
//! 8 bytes, its masked CRC-32C, the data, the data's masked CRC-32C), each holding one `Event` protobuf:
//! first the file version (`brain.Event:2`), then a `SessionLog.START` at the first step this process
//! trains, then summaries. The few protobuf fields needed are encoded here by hand.
//!
//! Files are named as TensorBoard's own writers name them, `events.out.tfevents.<secs>.<host>.<pid>.0`,
//! and TensorBoard reads the files of a directory in name order; a new file is named to sort after
//! those already there. One background thread does every file operation, so a slow or failing disk
//! never holds up training: the first I/O error is said once, and the events after it are dropped.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The version the first event of every file names: summaries and `SessionLog` restarts.
pub const FILE_VERSION: &str = "brain.Event:2";
/// The start of every events file's name; TensorBoard reads the files whose name holds `tfevents`.
pub const FILE_PREFIX: &str = "events.out.tfevents.";
/// How long closing waits for the queued events to reach the disk.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The CRC-32C (Castagnoli) table, reflected polynomial 0x82F63B78.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC-32C of `data` (`b"123456789"` gives 0xE3069283).
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated right by 15 bits, plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// A protobuf message being encoded.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// The key of `field` with wire type `wire` (0 varint, 1 fixed 64 bits, 2 length-delimited, 5 fixed 32).
    fn key(&mut self, field: u64, wire: u64) -> &mut Self {
        self.varint(field << 3 | wire);
        self
    }

    fn uint(mut self, field: u64, v: u64) -> Self {
        self.key(field, 0).varint(v);
        self
    }

    fn double(mut self, field: u64, v: f64) -> Self {
        self.key(field, 1).0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(mut self, field: u64, v: f32) -> Self {
        self.key(field, 5).0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, field: u64, data: &[u8]) -> Self {
        self.key(field, 2).varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }

    fn message(self, field: u64, m: Message) -> Self {
        self.bytes(field, &m.0)
    }
}

/// `Event` fields (tensorboard/compat/proto/event.proto).
const EVENT_FILE_VERSION: u64 = 3;
const EVENT_SUMMARY: u64 = 5;
const EVENT_SESSION_LOG: u64 = 7;
/// `SessionLog.START`.
const SESSION_START: u64 = 1;
/// `TensorProto.dtype` `DT_STRING`; `SummaryMetadata.data_class` `DATA_CLASS_TENSOR`.
const DT_STRING: u64 = 7;
const DATA_CLASS_TENSOR: u64 = 2;

/// An `Event` at `step`, now, holding `what` in its field `field`.
fn event(step: u64, field: u64, what: Message) -> Vec<u8> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Message::default().double(1, now).uint(2, step).message(field, what).0
}

/// A `Summary.Value` of `tag` holding a 32-bit `simple_value` (how scalars are logged).
fn scalar_value(tag: &str, v: f64) -> Message {
    Message::default().bytes(1, tag.as_bytes()).float(2, v as f32)
}

/// A `Summary.Value` of `tag` for TensorBoard's text plugin: a string tensor, its metadata naming the plugin.
fn text_value(tag: &str, text: &str) -> Message {
    let plugin = Message::default().bytes(1, b"text");
    let metadata = Message::default().message(1, plugin).uint(4, DATA_CLASS_TENSOR);
    let tensor = Message::default().uint(1, DT_STRING).message(2, Message::default()).bytes(8, text.as_bytes());
    Message::default().bytes(1, tag.as_bytes()).message(9, metadata).message(8, tensor)
}

/// Appends events to a new file in a directory, from a background thread.
pub struct EventWriter {
    queue: Option<Sender<Vec<u8>>>,
    finished: Receiver<()>,
}

impl EventWriter {
    /// A new events file in `dir` (made if missing), opened with the file version and a
    /// `SessionLog.START` at `first_step`: TensorBoard then drops what earlier files logged from that
    /// step on (steps a stopped run logged after its last checkpoint), so a resumed run's steps show once.
    pub fn start(dir: &Path, first_step: u64) -> EventWriter {
        let (queue, events) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let dir = dir.to_path_buf();
        let spawned = std::thread::Builder::new().name("tensorboard".into()).spawn(move || {
            write_events(&dir, events);
            let _ = done.send(());
        });
        if let Err(e) = spawned {
            eprintln!("warning: no TensorBoard events for this run (cannot start their writer: {e}); the run goes on");
        }
        let writer = EventWriter { queue: Some(queue), finished };
        writer.send(event(0, EVENT_FILE_VERSION, Message(FILE_VERSION.as_bytes().to_vec())));
        writer.send(event(first_step, EVENT_SESSION_LOG, Message::default().uint(1, SESSION_START)));
        writer
    }

    /// One event at `step` with a scalar for each `(tag, value)`.
    pub fn scalars(&self, step: u64, values: &[(&str, f64)]) {
        if values.is_empty() {
            return;
        }
        let summary = values.iter().fold(Message::default(), |s, (tag, v)| s.message(1, scalar_value(tag, *v)));
        self.send(event(step, EVENT_SUMMARY, summary));
    }

    /// `text` (Markdown) under `tag` at `step`, for TensorBoard's text tab.
    pub fn text(&self, step: u64, tag: &str, text: &str) {
        self.send(event(step, EVENT_SUMMARY, Message::default().message(1, text_value(tag, text))));
    }

    fn send(&self, event: Vec<u8>) {
        if let Some(queue) = &self.queue {
            // A writer that stopped (its error already said) takes nothing more.
            let _ = queue.send(record(&event));
        }
    }

    /// Writes what is queued and closes the file, waiting at most 30 s for a slow disk.
    pub fn close(&mut self) {
        if self.queue.take().is_none() {
            return;
        }
        if let Err(RecvTimeoutError::Timeout) = self.finished.recv_timeout(CLOSE_WAIT) {
            eprintln!(
                "warning: the TensorBoard events were not all written within {} s; the last ones may be missing",
                CLOSE_WAIT.as_secs()
            );
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: each event as it comes, flushed whenever the queue is empty, until the queue
/// closes. The first error is said once; the events after it are dropped.
fn write_events(dir: &Path, events: Receiver<Vec<u8>>) {
    let mut file = match create(dir) {
        Ok(file) => Some(file),
        Err(why) => {
            warn(&why);
            None
        }
    };
    while let Ok(first) = events.recv() {
        let Some((path, out)) = file.as_mut() else { continue };
        let mut written = out.write_all(&first);
        for next in events.try_iter() {
            written = written.and_then(|_| out.write_all(&next));
        }
        if let Err(e) = written.and_then(|_| out.flush()) {
            warn(&format!("{}: {e}", path.display()));
            file = None;
        }
    }
}

fn warn(why: &str) {
    eprintln!("warning: cannot write the TensorBoard events ({why}); the run goes on without them");
}

/// A new events file in `dir`, named to sort after every events file already there.
fn create(dir: &Path) -> Result<(PathBuf, BufWriter<File>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let listed = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let newest = listed
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix(FILE_PREFIX)?.split('.').next()?.parse::<u64>().ok())
        .max();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = newest.map_or(now, |n| now.max(n + 1));
    let host = super::host_name().replace(['/', '\\'], "_");
    let path = dir.join(format!("{FILE_PREFIX}{secs:010}.{host}.{}.0", std::process::id()));
    let file =
        File::options().write(true).create_new(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, BufWriter::new(file)))
}
