//! Makes the `ftexp` binary find libtorch with no environment set: an rpath to the directory torch-sys
//! linked against, and `libtorch_cuda` kept on the link line (otherwise `--as-needed` drops it, since
//! nothing references its symbols directly, and CUDA then reads as unavailable on a GPU machine).
//! Also compiles `csrc/dist.cpp`, the bridge to c10d: with Gloo when the `libgloo-dev` headers are
//! installed, with NCCL when the wheel's NCCL and CUDA headers are there (`make setup` installs both);
//! and `csrc/memory.cpp`, the counting CPU allocator.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/memory.cpp");
    println!("cargo:rerun-if-changed=csrc/tensors.cpp");
    println!("cargo::rustc-check-cfg=cfg(ftexp_dist)");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=BUILT_LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=DIST_BRIDGE_MISSING=libtorch was not found at build time");
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
    dist_bridge(&lib, cuda);
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

/// Compiles the c10d bridge with what this machine has; `DIST_BRIDGE_MISSING` tells the binary what was
/// left out, for its error messages.
fn dist_bridge(lib: &Path, cuda: bool) {
    let include = lib.join("../include");
    if !include.join("torch/csrc/distributed/c10d/TCPStore.hpp").exists() {
        println!("cargo:rustc-env=DIST_BRIDGE_MISSING=libtorch's c10d headers were not found at build time");
        return;
    }
    let mut missing = Vec::new();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("csrc/dist.cpp")
        .file("csrc/memory.cpp")
        .file("csrc/tensors.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-w");
    let gloo = Path::new("/usr/include/gloo/algorithm.h").exists();
    println!("cargo:rerun-if-changed=/usr/include/gloo/algorithm.h");
    if gloo {
        build.define("USE_C10D_GLOO", None).define("FTEXP_GLOO", None);
    } else {
        missing.push("Gloo (CPU): install the libgloo-dev headers (`make setup` does, as root) and build again");
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
    } else {
        missing.push("NCCL (CUDA): build on a CUDA wheel with the NCCL, nvidia-cuda-crt and nvidia-cuda-cccl headers (`make setup`)");
    }
    build.compile("ftexp_dist");
    if nccl {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lc10_cuda,--as-needed");
    }
    println!("cargo:rustc-cfg=ftexp_dist");
    println!("cargo:rustc-env=DIST_BRIDGE_MISSING={}", missing.join("; "));
}
