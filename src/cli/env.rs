//! `ftexp env`.
use ftexp::native::Part;

/// Print ftexp's and libtorch's versions, the CUDA devices found, and the native parts this build has.
#[derive(clap::Args)]
pub struct Args {
    /// One JSON object instead of text (what tests and scripts read).
    #[arg(long)]
    json: bool,
}

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

/// Each native part: present, or `missing: <what to install>`.
fn part_line(part: Part) -> String {
    match part.missing() {
        None => "present".into(),
        Some(why) => format!("missing: {why}"),
    }
}

pub fn exec(a: Args) -> anyhow::Result<()> {
    if a.json {
        let parts: serde_json::Map<String, serde_json::Value> = Part::ALL
            .iter()
            .map(|p| (p.name().to_string(), serde_json::json!({"present": p.present(), "missing": p.missing()})))
            .collect();
        let out = serde_json::json!({
            "ftexp": env!("CARGO_PKG_VERSION"),
            "libtorch": env!("BUILT_LIBTORCH_VERSION"),
            "cuda": tch::Cuda::is_available(),
            "devices": tch::Cuda::device_count(),
            "threads": tch::get_num_threads(),
            "native": parts,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("ftexp {}", version_line());
    println!("ftexp:     {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch:  {}", env!("BUILT_LIBTORCH_VERSION"));
    println!("cuda:      {}", if tch::Cuda::is_available() { "available" } else { "not available" });
    println!("devices:   {}", tch::Cuda::device_count());
    println!("threads:   {}", tch::get_num_threads());
    for part in Part::ALL {
        println!("{:<20}{}", format!("{}:", part.name()), part_line(part));
    }
    Ok(())
}
