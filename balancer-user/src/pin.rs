//! The bpffs directory where maps and links are pinned, so the data plane
//! outlives the daemon and a restarted daemon adopts it.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use balancer_common::maps;

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

const XDP_LINK_PREFIX: &str = "link_xdp_";
const TC_LINK_PREFIX: &str = "link_tc_";

/// The pin of the XDP link on interface `ifname`.
pub fn xdp_link(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("{XDP_LINK_PREFIX}{ifname}"))
}

/// The pin of the TCX link on interface `ifname` (`mode = "tc"`, 6.6+).
pub fn tc_link(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(format!("{TC_LINK_PREFIX}{ifname}"))
}

/// Is `name` a pin the balancer makes: one of its maps
/// ([`maps::ALL`]) or one of its links?
fn ours(name: &str) -> bool {
    maps::ALL.contains(&name)
        || [XDP_LINK_PREFIX, TC_LINK_PREFIX].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|ifname| !ifname.is_empty())
        })
}

/// Is `path` one of the balancer's link pins?
fn is_link(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(XDP_LINK_PREFIX) || n.starts_with(TC_LINK_PREFIX))
}

/// Detach the link pinned at `path` now (`BPF_LINK_DETACH`). Removing the
/// pin alone detaches the program only once the kernel frees the link,
/// from a work queue some time later (longer on a busy machine), and
/// whatever is attached to the hook right after `balancer detach` would
/// find it still taken. Best effort: the pin's removal that follows
/// detaches it in the end anyway (aya 0.14 has no call for this).
fn detach_link_now(path: &Path) {
    // `union bpf_attr` as BPF_OBJ_GET and BPF_LINK_DETACH read it.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
        _pad: [u32; 3],
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let bpf = |cmd: libc::c_long, attr: *const libc::c_void, size: usize| unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr, size)
    };
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let get = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, (&raw const get).cast(), size_of::<ObjGet>());
    let Ok(fd) = i32::try_from(fd) else {
        return;
    };
    if fd < 0 {
        return;
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let detach = LinkDetach {
        link_fd: std::os::fd::AsRawFd::as_raw_fd(&link) as u32,
        _pad: [0; 3],
    };
    let _ = bpf(
        BPF_LINK_DETACH,
        (&raw const detach).cast(),
        size_of::<LinkDetach>(),
    );
}

/// The entries of `pin_dir` (none if it does not exist), split into
/// the balancer's pins and everything else.
fn entries(pin_dir: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut mine, mut foreign) = (Vec::new(), Vec::new());
    let list = match fs::read_dir(pin_dir) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((mine, foreign)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", pin_dir.display())),
    };
    for entry in list {
        let entry = entry.with_context(|| format!("cannot read {}", pin_dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let name = entry.file_name();
        if is_file && name.to_str().is_some_and(ours) {
            mine.push(entry.path());
        } else {
            foreign.push(entry.path());
        }
    }
    foreign.sort();
    Ok((mine, foreign))
}

/// Refuse a pin dir that holds anything the balancer does not pin there:
/// `balancer detach` would leave it, but sharing a directory with another
/// tool's pins (say `pin_dir = "/sys/fs/bpf"`) invites mistakes both ways.
pub fn refuse_foreign(pin_dir: &Path) -> anyhow::Result<()> {
    let (_, foreign) = entries(pin_dir)?;
    if let Some(first) = foreign.first() {
        bail!(
            "bpf.pin_dir: {} holds {} that the balancer did not pin ({} in all); give the balancer a directory of its own",
            pin_dir.display(),
            first.display(),
            foreign.len()
        );
    }
    Ok(())
}

/// What [`remove_ours`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// The balancer's pins removed.
    pub pins: usize,
    /// Other entries left in place (the directory stays with them).
    pub foreign_left: usize,
}

/// Remove the balancer's pins in `pin_dir` (its maps and links: the
/// programs detach once nothing else holds their links), and the directory
/// if that leaves it empty. Anything else there is another tool's and stays.
pub fn remove_ours(pin_dir: &Path) -> anyhow::Result<Removed> {
    let (mine, foreign) = entries(pin_dir)?;
    for path in &mine {
        if is_link(path) {
            detach_link_now(path);
        }
        fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    if foreign.is_empty() && pin_dir.exists() {
        match fs::remove_dir(pin_dir) {
            // A bpffs mount point itself (`pin_dir = "/sys/fs/bpf"`) stays.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            other => {
                other.with_context(|| format!("cannot remove {}", pin_dir.display()))?;
            }
        }
    }
    Ok(Removed {
        pins: mine.len(),
        foreign_left: foreign.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_of_ours_are_the_maps_and_links_only() {
        for name in [
            "SERVICES",
            "MAGLEV",
            "CONNTRACK",
            "link_xdp_eth0",
            "link_tc_veth-gw1",
        ] {
            assert!(ours(name), "{name}");
        }
        for name in [
            "link_xdp_",
            "cilium_calls",
            "services",
            "MAGLEV.bak",
            "VIP_PORTS",
            "tc",
        ] {
            assert!(!ours(name), "{name}");
        }
    }

    /// On a plain directory: which filesystem does not matter here.
    #[test]
    fn remove_ours_leaves_foreign_entries_and_their_directory() {
        let dir = std::env::temp_dir().join(format!("balancer-pin-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("globals")).unwrap();
        for name in ["MAGLEV", "link_xdp_eth0", "other_tool_map"] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let e = refuse_foreign(&dir).unwrap_err().to_string();
        assert!(e.contains("globals") && e.contains("(2 in all)"), "{e}");
        assert_eq!(
            remove_ours(&dir).unwrap(),
            Removed {
                pins: 2,
                foreign_left: 2
            }
        );
        assert!(dir.join("other_tool_map").exists() && dir.join("globals").exists());
        assert!(!dir.join("MAGLEV").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
