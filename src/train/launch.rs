//! Runs on several devices, the torchrun way: `ftexp run` with `train.devices = N` starts N copies of
//! itself with torchrun's variables set (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`) and watches them; a process started by torchrun, srun or any launcher
//! that sets those joins the group it describes instead.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::replicas::Replicas;
use super::trainer::Trainer;
use crate::device::Placement;
use crate::dist::Rank;
use crate::error::Problems;
use crate::experiment::{self, Experiment, RunStatus, World};
use crate::plan::RunPlan;

/// (Not `FTEXP_…`: those are config keys.) Rank 0 of processes this launcher started writes its run directory into the file this names, so
/// the launcher can mark the run failed when rank 0 itself was killed.
const RUN_DIR_FILE: &str = "_FTEXP_RUN_DIR_FILE";

/// Joins the process group this process belongs to, if any (torchrun's variables say; a world of one
/// is a process on its own), after checking it against the plan's training settings.
pub fn join(plan: &RunPlan) -> Result<Option<Replicas>, Problems> {
    let t = &plan.config.train;
    let Some(rank) = Rank::from_env()?.filter(|r| r.world > 1) else {
        if t.devices > 1 {
            return Err(Problems::one(format!(
                "train.devices = {}: start the run with `ftexp run`, which starts one process per device, or with a launcher such as torchrun",
                t.devices
            )));
        }
        return Ok(None);
    };
    if t.devices as usize != rank.local_world {
        return Err(Problems::one(format!(
            "train.devices = {} but the launcher started {} processes on this machine (LOCAL_WORLD_SIZE); set train.devices = {}",
            t.devices, rank.local_world, rank.local_world
        )));
    }
    let per_step = t.micro_batch_size.max(1) * rank.world as u64;
    if !t.batch_size.is_multiple_of(per_step) {
        return Err(Problems::one(format!(
            "train.batch_size = {} is not a multiple of micro_batch_size × processes = {} × {} = {per_step}; make it {}",
            t.batch_size,
            t.micro_batch_size,
            rank.world,
            (t.batch_size / per_step + 1) * per_step
        )));
    }
    let device = rank.device(plan.placement.device);
    if !device.is_cuda() && std::env::var_os("OMP_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / rank.local_world).max(1) as i32);
    }
    let timeout = Duration::from_secs(t.sync_timeout_s);
    Replicas::join(rank, device, timeout).map(Some)
}

/// Where a rank builds its model: on GPU `LOCAL_RANK` when the run is on CUDA.
pub fn on_rank(placement: Placement, rank: Option<&Rank>) -> Placement {
    match rank {
        Some(r) if placement.device.is_cuda() => Placement { device: tch::Device::Cuda(r.local_rank), ..placement },
        _ => placement,
    }
}

/// Makes every replica start from rank 0's tensors and position, and records the processes in run.json.
pub(super) fn start_replicas(trainer: &mut Trainer, exp: Option<&Experiment>) -> Result<(), Problems> {
    let Some(replicas) = &mut trainer.replicas else { return Ok(()) };
    replicas.copy_from_first(&trainer.built.trainable, &mut trainer.opt, &mut trainer.state)?;
    replicas.attach(&trainer.built.trainable)?;
    let device = trainer.built.model.device();
    let me = format!("{}/{}", experiment::host_name(), crate::device::name(device));
    let ranks = replicas.gather_text(&me, device)?;
    let Some(exp) = exp else { return Ok(()) };
    if let Some(file) = std::env::var_os(RUN_DIR_FILE) {
        let _ = std::fs::write(file, exp.dir.display().to_string());
    }
    exp.update(|i| i.world = Some(World { size: ranks.len(), ranks }))
}

/// The signal the launcher was asked to stop with, forwarded to its processes.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Starts `n` copies of this program with `args` on this machine, one per device, and waits for them.
/// The first one to fail stops the others (within seconds) and the error names it; Ctrl-C or SIGTERM
/// is passed on, so the run saves a checkpoint and stops.
/// Whether a command asked for `devices` processes starts them itself: more than one, and no
/// launcher's group (torchrun's variables) to join.
pub fn starts_processes(devices: u64) -> Result<bool, Problems> {
    Ok(devices > 1 && Rank::from_env()?.is_none_or(|r| r.world <= 1))
}

/// Starts `devices` copies of this very command line and waits for them (see [`spawn_local`]).
pub fn start_processes(devices: u64) -> Result<(), Problems> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    spawn_local(devices as usize, &args)
}

pub fn spawn_local(n: usize, args: &[String]) -> Result<(), Problems> {
    let exe = std::env::current_exe().map_err(|e| Problems::one(format!("cannot find the ftexp binary: {e}")))?;
    let port = free_port()?;
    let run_dir_file = std::env::temp_dir().join(format!("ftexp-launch-{}-{port}", std::process::id()));
    let _ = std::fs::remove_file(&run_dir_file);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
    }
    let mut children = Vec::new();
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env(RUN_DIR_FILE, &run_dir_file);
        // SAFETY: prctl in the child before exec; a process is never left behind its launcher.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_all(&mut children, Duration::from_secs(5));
                return Err(Problems::one(format!("cannot start process {rank} of {n}: {e}")));
            }
        }
    }
    let outcome = watch(&mut children);
    let run_dir = std::fs::read_to_string(&run_dir_file).ok().map(PathBuf::from);
    let _ = std::fs::remove_file(&run_dir_file);
    if let (Err(e), Some(dir)) = (&outcome, &run_dir) {
        mark_failed(dir, &e.to_string());
    }
    outcome
}

/// Waits for every process; on the first failure or a stop request, stops the rest.
fn watch(children: &mut [Child]) -> Result<(), Problems> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut forwarded = false;
    loop {
        let signal = STOP_SIGNAL.load(Ordering::SeqCst);
        if signal != 0 && !forwarded {
            forwarded = true;
            for (child, _) in children.iter().zip(&done).filter(|(_, d)| d.is_none()) {
                // SAFETY: a signal to a child this process started and has not reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let mut failed = None;
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank].is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                done[rank] = Some(status);
                // Of processes that ended together, the one killed by a signal is the cause.
                let killed = std::os::unix::process::ExitStatusExt::signal(&status).is_some();
                if !status.success() && !forwarded && (failed.is_none() || killed) {
                    failed = Some((rank, child.id(), status));
                }
            }
        }
        if let Some((rank, pid, status)) = failed {
            stop_all(children, Duration::from_secs(5));
            return Err(Problems::one(format!(
                "rank {rank} of {} (pid {pid}) {}; the other ranks were stopped",
                children.len(),
                describe(status)
            )));
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if forwarded {
        return Err(Problems::one(format!("interrupted: all {} processes stopped", children.len())));
    }
    Ok(())
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("failed (exit status {code})"),
        (None, Some(9)) => "was killed (SIGKILL, perhaps by the out-of-memory killer)".into(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "stopped".into(),
    }
}

/// SIGTERM to every process still running, SIGKILL to those still running after `grace`.
fn stop_all(children: &mut [Child], grace: Duration) {
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: a signal to a child this process started and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && children.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// Marks the run failed when its rank 0 could not (it was killed, say).
fn mark_failed(dir: &Path, cause: &str) {
    let Ok(exp) = Experiment::open(dir) else { return };
    let Ok(_lock) = exp.lock() else { return };
    if exp.read_run_info().is_ok_and(|i| i.status == RunStatus::Running) {
        let _ = exp.fail(cause);
    }
}

/// A port on the loopback interface nothing listens on now.
fn free_port() -> Result<u16, Problems> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Problems::one(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| Problems::one(format!("cannot find a free port: {e}")))
}
