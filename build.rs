//! Makes the `ftexp` binary find libtorch with no environment set: an rpath to the directory torch-sys
//! linked against, and `libtorch_cuda` kept on the link line (otherwise `--as-needed` drops it, since
//! nothing references its symbols directly, and CUDA then reads as unavailable on a GPU machine).
//!
//! Also compiles ftexp's C++ (`csrc/`, called from `src/native/`), each part only when its headers are
//! there, under its own cfg, and names whatever a build lacks in `BUILT_*_MISSING` (empty: present),
//! which `ftexp env` prints:
//! - `csrc/memory.cpp` (the counting CPU allocator) and `csrc/tensors.cpp` (the fused AdamW, set_grad):
//!   libtorch's own headers (cfg `ftexp_native`);
//! - `csrc/dist.cpp`, the bridge to c10d: with Gloo when the `libgloo-dev` headers are installed (cfg
//!   `ftexp_gloo`), with NCCL when the wheel's NCCL and CUDA headers are there (cfg `ftexp_nccl`);
//!   `make setup` installs both.
use std::path::{Path, PathBuf};

const NO_LIBTORCH: &str = "libtorch was not found at build time (install the torch wheel, `make setup`)";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    for f in ["csrc/dist.cpp", "csrc/memory.cpp", "csrc/tensors.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for cfg in ["ftexp_native", "ftexp_gloo", "ftexp_nccl"] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=BUILT_LIBTORCH_VERSION=unknown");
        for part in ["NATIVE", "GLOO", "NCCL"] {
            missing(part, NO_LIBTORCH);
        }
        return;
    };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let cuda = lib.join("libtorch_cuda.so").exists();
    if cuda {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rustc-env=BUILT_LIBTORCH_VERSION={}", torch_version(&lib));
    native(&lib);
    dist_bridge(&lib, cuda);
}

/// `BUILT_<part>_MISSING`: what to install for the part (empty when the build has it).
fn missing(part: &str, why: &str) {
    println!("cargo:rustc-env=BUILT_{part}_MISSING={why}");
}

/// A pip wheel keeps its version next to lib/: torch/version.py holds `__version__ = '2.11.0+cu130'`.
fn torch_version(lib: &Path) -> String {
    std::fs::read_to_string(lib.join("../version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__"))
                .map(|rest| rest.trim_matches(|c: char| c == ' ' || c == '=' || c == '\'' || c == '"').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A C++17 build against libtorch's headers.
fn cpp(include: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-w");
    build
}

/// The counting allocator, the fused AdamW and set_grad: ATen and c10 only.
fn native(lib: &Path) {
    let include = lib.join("../include");
    if !include.join("ATen/ATen.h").exists() {
        missing("NATIVE", "libtorch's C++ headers (torch/include/ATen) were not found at build time; install the full torch wheel and build again");
        return;
    }
    cpp(&include).file("csrc/memory.cpp").file("csrc/tensors.cpp").compile("ftexp_native");
    println!("cargo:rustc-cfg=ftexp_native");
    missing("NATIVE", "");
}

/// The c10d bridge, with each backend whose headers this machine has.
fn dist_bridge(lib: &Path, cuda: bool) {
    let include = lib.join("../include");
    if !include.join("torch/csrc/distributed/c10d/TCPStore.hpp").exists() {
        let why = "libtorch's c10d headers (torch/csrc/distributed/c10d) were not found at build time";
        missing("GLOO", why);
        missing("NCCL", why);
        return;
    }
    let mut build = cpp(&include);
    build.file("csrc/dist.cpp");
    let gloo = Path::new("/usr/include/gloo/algorithm.h").exists();
    println!("cargo:rerun-if-changed=/usr/include/gloo/algorithm.h");
    if gloo {
        build.define("USE_C10D_GLOO", None).define("FTEXP_GLOO", None);
        println!("cargo:rustc-cfg=ftexp_gloo");
        missing("GLOO", "");
    } else {
        missing(
            "GLOO",
            "the libgloo-dev headers (/usr/include/gloo): `make setup` installs them (as root); build again",
        );
    }
    // The NCCL and CUDA runtime headers of the wheel's own packages (`nvidia-cuda-crt` and
    // `nvidia-cuda-cccl` add what the runtime package lacks).
    let nvidia = lib.join("../../nvidia");
    let nccl_headers = [nvidia.join("nccl/include"), nvidia.join("cu13/include")];
    let nccl = cuda
        && nccl_headers[0].join("nccl.h").exists()
        && nccl_headers[1].join("crt/host_defines.h").exists()
        && nccl_headers[1].join("nv/target").exists();
    if nccl {
        build.define("USE_C10D_NCCL", None).define("FTEXP_NCCL", None).define("USE_CUDA", None);
        for dir in &nccl_headers {
            build.include(dir);
        }
        println!("cargo:rustc-cfg=ftexp_nccl");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lc10_cuda,--as-needed");
        missing("NCCL", "");
    } else {
        missing("NCCL", "a CUDA torch wheel with the NCCL, nvidia-cuda-crt and nvidia-cuda-cccl headers (`make setup`); build again");
    }
    if gloo || nccl {
        build.compile("ftexp_dist");
    }
}
