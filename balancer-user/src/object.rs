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

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    /// The program's calls of its own (BPF-to-BPF) are the paths `main.rs`
    /// keeps apart, and nothing else: a function the compiler did not
    /// inline (a closure, say) is one more frame, and kernel 6.1's verifier
    /// counts at least 32 bytes for every frame of a call chain against
    /// 512 (it refused the TC program once over a closure in `forward`:
    /// "combined stack size of 3 calls is 544").
    #[test]
    fn the_kernel_program_calls_only_its_planned_paths() {
        let bytes = super::ebpf_object().expect("a kernel object (cargo xtask build)");
        let elf = object::File::parse(bytes).expect("an ELF object");
        let paths = ["common_path", "icmp_path", "reply_path", "fragment_path"];
        // Compiler builtins, present as weak symbols.
        let builtins = ["memcpy", "memmove", "memset", "memcmp", "bcmp"];
        let unplanned: Vec<String> = elf
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.section_index().is_some())
            .filter(|s| {
                elf.section_by_index(s.section_index().unwrap())
                    .and_then(|section| section.name().map(|n| n == ".text"))
                    .unwrap_or(false)
            })
            .map(|s| s.name().unwrap_or("?").to_owned())
            .filter(|name| {
                !builtins.contains(&name.as_str()) && !paths.iter().any(|p| name.contains(p))
            })
            .collect();
        assert!(
            unplanned.is_empty(),
            "functions compiled as calls of their own: {unplanned:?}"
        );
    }
}
