//! Several processes training one model, on PyTorch's own distributed engine (c10d): where this process
//! stands (torchrun's variables), and a process group — Gloo on CPUs, NCCL on GPUs — with the few
//! collectives data-parallel training needs. The calls into c10d are `native::collectives`'.
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::Problems;
use crate::native::{
    self,
    collectives::{Join, ProcessGroup},
    Part,
};

/// This process's place in a run of several, as torchrun (or `ftexp run` itself, or any launcher that
/// follows torchrun's conventions) describes it in the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Rank {
    /// `None` when `RANK` and `WORLD_SIZE` are not set: a process on its own.
    pub fn from_env() -> Result<Option<Rank>, Problems> {
        Rank::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Rank>, Problems> {
        let (Some(_), Some(_)) = (var("RANK"), var("WORLD_SIZE")) else {
            return Ok(None);
        };
        let number = |key: &str, default: Option<usize>| -> Result<usize, Problems> {
            match var(key) {
                Some(v) => v.trim().parse().map_err(|_| {
                    Problems::one(format!(
                        "environment variable {key} = {v:?} is not a whole number; the launcher must set it"
                    ))
                }),
                None => default.ok_or_else(|| {
                    Problems::one(format!(
                        "environment variable {key} is not set; the launcher must set it (as torchrun does)"
                    ))
                }),
            }
        };
        let (rank, world) = (number("RANK", None)?, number("WORLD_SIZE", None)?);
        let local_rank = number("LOCAL_RANK", Some(rank))?;
        let local_world = number("LOCAL_WORLD_SIZE", Some(world))?;
        let master_port = number("MASTER_PORT", Some(29500))?;
        if rank >= world || local_rank >= local_world || world == 0 {
            return Err(Problems::one(format!(
                "RANK = {rank}, WORLD_SIZE = {world}, LOCAL_RANK = {local_rank}, LOCAL_WORLD_SIZE = {local_world}: a rank must be below its world size; fix the launcher's settings"
            )));
        }
        let master_port = u16::try_from(master_port)
            .map_err(|_| Problems::one(format!("MASTER_PORT = {master_port} is not a port (1–65535)")))?;
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        Ok(Some(Rank { rank, world, local_rank, local_world, master_addr, master_port }))
    }

    /// The device of this rank: GPU `LOCAL_RANK` when the run is on CUDA, else the CPU.
    pub fn device(&self, requested: Device) -> Device {
        if requested.is_cuda() {
            Device::Cuda(self.local_rank)
        } else {
            requested
        }
    }
}

/// What this binary can use: each backend, or why not.
pub fn available(backend: Backend) -> Result<(), Problems> {
    if native::collectives::has(backend.name()) {
        return Ok(());
    }
    let part = if backend == Backend::Nccl { Part::Nccl } else { Part::Gloo };
    Err(Problems::one(format!(
        "training on several {} needs {}, which this ftexp was built without: {}",
        if backend == Backend::Nccl { "GPUs" } else { "CPU processes" },
        backend.name(),
        part.missing().unwrap_or("the c10d bridge was not compiled")
    )))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn for_device(device: Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// A c10d process group this process has joined.
pub struct Group {
    group: ProcessGroup,
    pub rank: usize,
    pub world: usize,
}

impl Group {
    /// Joins the group of `r.world` processes that rank 0 hosts at `MASTER_ADDR:MASTER_PORT`; gives up
    /// after `timeout` (also the limit on each collective).
    pub fn join(r: &Rank, backend: Backend, timeout: Duration) -> Result<Group, Problems> {
        available(backend)?;
        let iface = std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default();
        let join = Join {
            backend: backend.name(),
            addr: &r.master_addr,
            port: r.master_port,
            rank: r.rank,
            world: r.world,
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            iface: &iface,
            // NCCL: one GPU per process, GPU LOCAL_RANK of this machine.
            gpu: if backend == Backend::Nccl { r.local_rank as i32 } else { -1 },
        };
        let group = bounded_join(join, r, timeout)?.map_err(|cause| join_error(r, &cause, timeout))?;
        Ok(Group { group, rank: r.rank, world: r.world })
    }

    /// A failed collective: another process stopped or did not answer in time.
    fn lost(&self, what: &str) -> impl FnOnce(String) -> Problems + '_ {
        let what = what.to_string();
        move |m| {
            Problems::peer_lost(format!(
                "rank {} of {}: {what} failed: {m} (another process stopped or did not answer in time)",
                self.rank, self.world
            ))
        }
    }

    /// Adds up `t` over all ranks, in place on every rank.
    pub fn allreduce_sum(&self, t: &Tensor) -> Result<(), Problems> {
        self.group.allreduce_sum(t).map_err(self.lost("allreduce"))
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), Problems> {
        self.group.broadcast(t, root).map_err(self.lost("broadcast"))
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&self) -> Result<(), Problems> {
        self.group.barrier().map_err(self.lost("barrier"))
    }
}

/// Runs c10d's join on a thread of its own and waits at most twice `timeout` (c10d's own limits cover
/// connecting and each wait for the other processes, one after the other): c10d's store client waits
/// for the handshake's answer with no limit, so a port where something listens but never answers would
/// hold this process forever. The thread left waiting ends with the process.
fn bounded_join(j: Join, r: &Rank, timeout: Duration) -> Result<Result<ProcessGroup, String>, Problems> {
    let (backend, addr, iface) = (j.backend.to_string(), j.addr.to_string(), j.iface.to_string());
    let (port, rank, world, timeout_ms, gpu) = (j.port, j.rank, j.world, j.timeout_ms, j.gpu);
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("c10d-join".into()).spawn(move || {
        let join = Join { backend: &backend, addr: &addr, port, rank, world, timeout_ms, iface: &iface, gpu };
        // A group that arrives after the wait gave up is dropped here (freed).
        let _ = tx.send(ProcessGroup::join(&join));
    });
    spawned
        .map_err(|e| Problems::io(format!("rank {}: cannot start a thread to join the process group: {e}", r.rank)))?;
    let limit = timeout.saturating_mul(2).max(Duration::from_secs(1));
    rx.recv_timeout(limit).map_err(|_| {
        Problems::peer_lost(format!(
            "rank {} of {}: no answer from the process group's store at {}:{} within {} s (train.sync_timeout_s = {}): something accepts connections there but does not answer as rank 0's ftexp; check that MASTER_ADDR and MASTER_PORT name the machine and port of rank 0 and that nothing else listens there, or raise train.sync_timeout_s",
            r.rank,
            r.world,
            r.master_addr,
            r.master_port,
            limit.as_secs(),
            timeout.as_secs()
        ))
    })
}

/// c10d's message, said in terms of what to change: a busy port is the user's to fix, a process that
/// never joined is a lost peer.
fn join_error(r: &Rank, cause: &str, timeout: Duration) -> Problems {
    let at = format!("{}:{}", r.master_addr, r.master_port);
    let lower = cause.to_lowercase();
    if lower.contains("address already in use") {
        return Problems::one(format!(
            "rank 0 cannot listen on {at}: the port is in use; set MASTER_PORT to a free port"
        ));
    }
    if lower.contains("timed out") || lower.contains("timeout") {
        return Problems::peer_lost(format!(
            "rank {} of {}: not every process joined at {at} within {} s ({cause}); start all {} processes with the same MASTER_ADDR and MASTER_PORT, or raise train.sync_timeout_s",
            r.rank,
            r.world,
            timeout.as_secs(),
            r.world
        ));
    }
    Problems::one(format!("rank {} of {}: cannot join the process group at {at}: {cause}", r.rank, r.world))
}
