//! The bpffs directory where maps and links are pinned, so the data plane
//! outlives the daemon and a restarted daemon adopts it.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Is `path` on a bpffs?
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by libc target
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Where the pins go: `pin_dir`, created if missing, which must be on a
/// bpffs. Anything else (tmpfs, or the private `/sys` that `ip netns exec`
/// mounts) would lose the pins, and with them every flow, when the daemon
/// stops: refuse with one clear line instead.
pub fn prepare(pin_dir: &Path) -> anyhow::Result<PathBuf> {
    check(pin_dir)?;
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("bpf.pin_dir: cannot create {}", pin_dir.display()))?;
    Ok(pin_dir.to_path_buf())
}

/// `Err` unless `pin_dir` is, or would be created, on a bpffs; creates
/// nothing (`balancer check`).
pub fn check(pin_dir: &Path) -> anyhow::Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    let on_fs = if pin_dir.exists() { pin_dir } else { parent };
    match on_bpffs(on_fs) {
        Ok(true) => {}
        Ok(false) => bail!(
            "bpf.pin_dir: {} is not on a bpffs (mount one: `mount -t bpf bpf {}`)",
            pin_dir.display(),
            on_fs.display()
        ),
        Err(e) => bail!("bpf.pin_dir: cannot check {}: {e}", on_fs.display()),
    }
    Ok(())
}

/// The pin of the XDP link on interface `ifname`.
pub fn xdp_link(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_xdp_{ifname}"))
}

/// The pin of the TCX link on interface `ifname` (`mode = "tc"`, 6.6+).
pub fn tc_link(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("link_tc_{ifname}"))
}

/// Remove every pin in `pin_dir` (maps and links) and the directory: the
/// programs detach once nothing else holds their links.
pub fn remove_all(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", pin_dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        removed += 1;
    }
    fs::remove_dir(pin_dir).with_context(|| format!("cannot remove {}", pin_dir.display()))?;
    Ok(removed)
}
