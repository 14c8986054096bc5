//! Running commands: each one printed before it runs, its status checked.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// The cargo that runs `cargo xtask`, in the workspace root. `AYA_BUILD_SKIP`
/// is removed so that balancer-user's build.rs really builds the kernel object.
pub fn cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .env_remove("AYA_BUILD_SKIP");
    cmd
}

/// The workspace's target directory, as cargo sees it (honours
/// `CARGO_TARGET_DIR` and `build.target-dir`).
pub fn target_dir() -> Result<PathBuf> {
    let json = output(cargo().args(["metadata", "--format-version=1", "--no-deps"]))?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("cargo metadata: bad JSON")?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata: no target_directory")
}

/// Prints the command line, runs it with inherited stdio and fails unless it
/// exits with success.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs the command quietly and returns its stdout; on failure the error
/// carries the last line it wrote to stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        bail!("`{line}` failed ({}): {last}", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
}

/// `VAR=value program args`, as one could paste it into a shell. The program
/// is shown by its file name (`cargo`, not the toolchain's full path).
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.display(), quote(v))));
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program());
    let words = std::iter::once(quote(program)).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("/opt/rust/bin/cargo");
        cmd.args(["test", "--", "a b", "it's"])
            .env("BALANCER_BIN", "/t/balancer")
            .env_remove("X");
        assert_eq!(
            display(&cmd),
            r"BALANCER_BIN=/t/balancer cargo test -- 'a b' 'it'\''s'"
        );
    }
}
