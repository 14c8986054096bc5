//! Builds the kernel object (`balancer-ebpf`, target bpfel-unknown-none) with
//! the nightly toolchain and bpf-linker, into `$OUT_DIR/balancer`.
//!
//! `AYA_BUILD_SKIP=1` skips it and leaves an empty stub, so `cargo check`,
//! clippy and host unit tests work without nightly or bpf-linker; loading the
//! stub then fails with a clear error.
use std::{env, fs, path::PathBuf};

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let object = out.join("balancer");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    // balancer-common is compiled into the object too.
    println!("cargo:rerun-if-changed=../balancer-common/src");
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        if !object.exists() {
            fs::write(&object, [])?;
        }
        return Ok(());
    }
    aya_build::build_ebpf(
        [Package {
            name: "balancer-ebpf",
            root_dir: "../balancer-ebpf",
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
