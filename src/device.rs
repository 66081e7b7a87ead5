//! Where a model runs: the typed `model.device` and `model.precision` settings mapped to libtorch's
//! device and number formats on this machine.
use tch::{Device, Kind};

use crate::config::{DeviceSetting, Precision};

/// A device and a precision that is never `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub precision: Precision,
}

impl Placement {
    /// `auto` device: a GPU when there is one, else the CPU; `auto` precision: `bf16-true` on CUDA,
    /// `32-true` on the CPU.
    pub fn resolve(device: DeviceSetting, precision: Precision) -> Placement {
        let device = match device {
            DeviceSetting::Auto => Device::cuda_if_available(),
            DeviceSetting::Cpu => Device::Cpu,
            DeviceSetting::Cuda(n) => Device::Cuda(n),
        };
        let precision = match precision {
            Precision::Auto if device.is_cuda() => Precision::Bf16,
            Precision::Auto => Precision::F32,
            p => p,
        };
        Placement { device, precision }
    }

    /// The kind that holds the weights and the activations.
    pub fn weight_kind(&self) -> Kind {
        match self.precision {
            Precision::Bf16 | Precision::Bf16Mixed => Kind::BFloat16,
            Precision::F16 => Kind::Half,
            Precision::F32 | Precision::Auto => Kind::Float,
        }
    }

    /// The kind trainable tensors are kept in: fp32 under `bf16-mixed`, else the weights' own.
    pub fn trainable_kind(&self) -> Kind {
        if self.precision == Precision::Bf16Mixed {
            Kind::Float
        } else {
            self.weight_kind()
        }
    }

    /// `Err` with the reason when the device is a GPU this machine does not have.
    pub fn check_available(&self) -> Result<(), &'static str> {
        if self.device.is_cuda() && !tch::Cuda::is_available() {
            return Err("no CUDA device is available on this machine");
        }
        Ok(())
    }

    /// The memory tensors on this device can use, when known: the machine's memory for the CPU, the
    /// card's as `nvidia-smi` reports it for a GPU.
    pub fn memory_bytes(&self) -> Option<u64> {
        if let Device::Cuda(index) = self.device {
            let out = std::process::Command::new("nvidia-smi")
                .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits", &format!("--id={index}")])
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            return Some(mib << 20);
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Bytes per element of the weights.
    pub fn weight_bytes(&self) -> u64 {
        if self.weight_kind() == Kind::Float {
            4
        } else {
            2
        }
    }

    pub fn device_name(&self) -> String {
        name(self.device)
    }
}

/// `cpu` or `cuda:N`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}
