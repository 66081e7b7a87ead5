//! `ftexp env`.
use ftexp::dist::Backend;

/// Print ftexp's and libtorch's versions and the CUDA devices found.
#[derive(clap::Args)]
pub struct Args {}

/// `0.1.0 (libtorch 2.11.0, CUDA available: no, CUDA devices: 0)`.
pub fn version_line() -> String {
    let cuda = tch::Cuda::is_available();
    format!(
        "{} (libtorch {}, CUDA available: {}, CUDA devices: {})",
        env!("CARGO_PKG_VERSION"),
        env!("BUILT_LIBTORCH_VERSION"),
        if cuda { "yes" } else { "no" },
        tch::Cuda::device_count()
    )
}

pub fn exec(_: Args) -> anyhow::Result<()> {
    println!("ftexp {}", version_line());
    println!("ftexp:     {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch:  {}", env!("BUILT_LIBTORCH_VERSION"));
    println!("cuda:      {}", if tch::Cuda::is_available() { "available" } else { "not available" });
    println!("devices:   {}", tch::Cuda::device_count());
    println!("threads:   {}", tch::get_num_threads());
    for (backend, what) in [(Backend::Gloo, "gloo"), (Backend::Nccl, "nccl")] {
        match ftexp::dist::available(backend) {
            Ok(()) => println!("{what}:      built in"),
            Err(e) => println!("{what}:      not built in: {e}"),
        }
    }
    Ok(())
}
