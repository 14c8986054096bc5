//! The kernel object built by `build.rs`, embedded in the binary.

use aya::include_bytes_aligned;

/// The ELF object of `balancer-ebpf`, or an empty stub under `AYA_BUILD_SKIP`.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The embedded object, or an error saying how to get a real one.
pub fn ebpf_object() -> anyhow::Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this binary was built with AYA_BUILD_SKIP and holds no kernel object; build it with `cargo xtask build`"
        );
    }
    Ok(EBPF_OBJECT)
}
