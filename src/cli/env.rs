//! `ftexp env`.

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
    Ok(())
}
