//! ftexp's errors: each is one line that names the file, key or row and says what to change, with a
//! kind that says who can fix it.
use std::fmt;

/// Who can fix an error, and the exit code `ftexp` ends with for it.
///
/// | kind | exit | meaning |
/// |---|---|---|
/// | [`User`](ErrorKind::User) | 2 | a config, file or flag to change (the message says what) |
/// | [`OutOfMemory`](ErrorKind::OutOfMemory) | 3 | the device ran out of memory (smaller micro-batches, shorter rows, 16-bit) |
/// | [`PeerLost`](ErrorKind::PeerLost) | 4 | another process of a run on several stopped or did not answer in time |
/// | [`Io`](ErrorKind::Io) | 5 | reading or writing a file failed (disk full, permissions) |
/// | [`Libtorch`](ErrorKind::Libtorch) | 1 | libtorch failed otherwise: an internal error |
///
/// 0 is success; any other error (a bug) also ends with 1.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    #[default]
    User,
    OutOfMemory,
    Libtorch,
    Io,
    PeerLost,
}

impl ErrorKind {
    /// The process's exit code for an error of this kind (see the table above).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::User => 2,
            ErrorKind::OutOfMemory => 3,
            ErrorKind::PeerLost => 4,
            ErrorKind::Io => 5,
            ErrorKind::Libtorch => 1,
        }
    }
}

/// One or more problems of one [`ErrorKind`], reported together, one line each.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Problems(pub Vec<String>, ErrorKind);

impl Problems {
    /// A problem the user can fix.
    pub fn one(msg: impl Into<String>) -> Self {
        Problems::of(ErrorKind::User, msg)
    }

    /// Several problems the user can fix.
    pub fn many(msgs: Vec<String>) -> Self {
        Problems(msgs, ErrorKind::User)
    }

    pub fn of(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Problems(vec![msg.into()], kind)
    }

    pub fn out_of_memory(msg: impl Into<String>) -> Self {
        Problems::of(ErrorKind::OutOfMemory, msg)
    }

    pub fn libtorch(msg: impl Into<String>) -> Self {
        Problems::of(ErrorKind::Libtorch, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Problems::of(ErrorKind::Io, msg)
    }

    pub fn peer_lost(msg: impl Into<String>) -> Self {
        Problems::of(ErrorKind::PeerLost, msg)
    }

    pub fn kind(&self) -> ErrorKind {
        self.1
    }

    pub fn push(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each problem with `prefix: ` in front, e.g. the flag that led to it.
    pub fn prefixed(self, prefix: &str) -> Problems {
        self.map(|m| format!("{prefix}: {m}"))
    }

    /// Each line rewritten by `f`, of the same kind.
    pub fn map(self, f: impl FnMut(String) -> String) -> Problems {
        Problems(self.0.into_iter().map(f).collect(), self.1)
    }

    /// `Err(self)` when any problem was found.
    pub fn into_result(&mut self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(std::mem::take(self))
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// Returns early with a one-line user error.
#[macro_export]
macro_rules! bail_user {
    ($($arg:tt)*) => {
        return Err($crate::error::Problems::one(format!($($arg)*)).into())
    };
}

/// Levenshtein distance, for did-you-mean suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The candidate closest to `input`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(input, c), c))
        .filter(|(d, c)| *d <= (c.len().max(input.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

thread_local! {
    /// Whether the current thread runs inside [`guard`], and the message of the panic caught there.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` and turns a panic inside it into a one-line problem that starts with `context`. libtorch's
/// C++ errors reach Rust as panics from tch (`index out of range`, an allocation that fails, shapes that
/// do not match): this is the one boundary where they become errors a user reads, with no panic text
/// or stack trace printed.
pub fn guard<T>(context: &str, f: impl FnOnce() -> T) -> Result<T, Problems> {
    catch_panic(f).map_err(|text| {
        let (kind, said) = explain(&text);
        Problems::of(kind, format!("{context}: {said}"))
    })
}

/// Runs `f`, and returns the message of a panic inside it instead of unwinding, with nothing printed:
/// for a library that panics on bad input where it should return an error (see [`guard`] for libtorch).
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.get() {
                CAUGHT.set(Some(panic_text(info.payload())));
            } else {
                default(info);
            }
        }));
    });
    let outer = GUARDED.replace(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.set(outer);
    result.map_err(|payload| CAUGHT.take().unwrap_or_else(|| panic_text(payload.as_ref())))
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "an internal error".into())
}

/// The first line of libtorch's message (tch wraps it as `…Torch("<message>\nException raised from …")`),
/// with what to change when memory ran out, and its kind: libtorch's message is the only place that
/// tells an out-of-memory error from the others, so this is the one place that reads it.
fn explain(text: &str) -> (ErrorKind, String) {
    let inner = text.split_once("Torch(\"").map_or(text, |(_, rest)| rest);
    let first = inner.split("\\n").next().unwrap_or(inner).lines().next().unwrap_or(inner);
    let first = first.trim_end_matches("\")").trim();
    let lower = first.to_lowercase();
    if lower.contains("out of memory") || lower.contains("can't allocate") || lower.contains("cannot allocate") {
        return (
            ErrorKind::OutOfMemory,
            format!(
                "out of memory ({first}); lower train.micro_batch_size or data.max_seq_length, or use a 16-bit model.precision"
            ),
        );
    }
    (ErrorKind::Libtorch, format!("libtorch: {first}"))
}
