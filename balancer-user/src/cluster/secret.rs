//! `[cluster] secret_file`: the key every gateway shares.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, bail};

/// Shorter keys are refused: the MAC is only as strong as the key.
pub const MIN_KEY_BYTES: usize = 16;

/// The key in `path`: its bytes without surrounding whitespace (so a
/// trailing newline does not matter). Refused, in one line, when the file
/// is missing, readable by group or others, or holds fewer than
/// [`MIN_KEY_BYTES`].
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let field = "cluster.secret_file";
    let meta = fs::metadata(path).with_context(|| format!("{field}: {}", path.display()))?;
    if !meta.is_file() {
        bail!("{field}: {} is not a file", path.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{field}: {} is readable by others than its owner (mode {mode:03o}); `chmod 600` it",
            path.display()
        );
    }
    let bytes = fs::read(path).with_context(|| format!("{field}: {}", path.display()))?;
    let key = bytes.trim_ascii();
    if key.len() < MIN_KEY_BYTES {
        bail!(
            "{field}: {} holds {} bytes, at least {MIN_KEY_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
            path.display(),
            key.len()
        );
    }
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("balancer-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_with_a_key_is_read() {
        let p = file("good", "0123456789abcdef0123\n", 0o600);
        assert_eq!(read(&p).unwrap(), b"0123456789abcdef0123");
    }

    #[test]
    fn bad_files_are_refused_in_one_line() {
        let cases = [
            (
                file("open", "0123456789abcdef0123", 0o644),
                "readable by others",
            ),
            (
                file("group", "0123456789abcdef0123", 0o640),
                "readable by others",
            ),
            (file("empty", "\n", 0o600), "holds 0 bytes"),
            (file("short", "short", 0o400), "holds 5 bytes"),
            (std::path::PathBuf::from("/nonexistent/key"), "No such file"),
        ];
        for (path, want) in cases {
            let line = format!("{:#}", read(&path).unwrap_err());
            assert!(line.starts_with("cluster.secret_file: "), "{line}");
            assert!(line.contains(want), "{line}");
            assert!(!line.contains('\n'));
        }
    }
}
