//! Rebuild when bpf-linker changes (xtask may rebuild it for a new LLVM).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
