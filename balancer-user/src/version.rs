//! What this binary is: the package version, the git revision it was built
//! from (`build.rs`) and a hash of the kernel object embedded in it, for
//! `balancer --version`, `balancer_build_info` and the status page.

use std::sync::LazyLock;

use xxhash_rust::xxh3::xxh3_64;

use crate::object::EBPF_OBJECT;

/// The package version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `git rev-parse --short HEAD` at build time, `-dirty` when the checkout
/// had changes, `unknown` when it was built outside a git checkout.
pub const GIT: &str = env!("BALANCER_GIT");

/// The embedded kernel object's XXH3-64 as 16 hex digits, or `none` for a
/// binary built without it (`AYA_BUILD_SKIP`). Two binaries with the same
/// hash load the same programs.
pub fn bpf_hash() -> &'static str {
    static HASH: LazyLock<String> = LazyLock::new(|| object_hash(EBPF_OBJECT));
    &HASH
}

fn object_hash(object: &[u8]) -> String {
    if object.is_empty() {
        "none".to_owned()
    } else {
        format!("{:016x}", xxh3_64(object))
    }
}

/// `0.1.0 (git 1a2b3c4, bpf 0123456789abcdef)`: what `--version` prints
/// after the program's name.
pub fn long() -> &'static str {
    static LONG: LazyLock<String> =
        LazyLock::new(|| format!("{VERSION} (git {GIT}, bpf {})", bpf_hash()));
    &LONG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_version_git_and_object() {
        assert_eq!(object_hash(&[]), "none");
        let hash = object_hash(b"\x7fELF");
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
        assert_ne!(object_hash(b"\x7fELF"), object_hash(b"\x7fELG"));
        assert!(!GIT.is_empty());
        assert_eq!(long(), format!("{VERSION} (git {GIT}, bpf {})", bpf_hash()));
    }
}
