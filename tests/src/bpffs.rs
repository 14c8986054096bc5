//! A private bpffs for one test, mounted in a temp dir of the root mount
//! namespace, so it is visible inside every `ip netns exec` (which remounts
//! `/sys`) and outlives any one daemon process: what restart adoption needs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::netns::random_suffix;

pub struct TempBpffs {
    root: PathBuf,
}

impl TempBpffs {
    pub fn new() -> Self {
        let root = std::env::temp_dir().join(format!("lbt-bpffs-{}", random_suffix()));
        std::fs::create_dir_all(&root).expect("create bpffs mount point");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&root)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t bpf {} failed", root.display());
        TempBpffs { root }
    }

    /// The mount point (pin under a subdirectory, like `/sys/fs/bpf/balancer`).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A `[control] socket` path beside the mount (a bpffs holds no
    /// sockets), removed with it: each test's daemon has its own, so no test
    /// ever talks to the host's `/run/balancer/control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        control_socket_of(&self.pin_dir())
    }

    /// A `[bpf] pin_dir` inside this bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        self.root.join("balancer")
    }
}

impl Default for TempBpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        // Unmounting drops every pin in it, so programs pinned there detach.
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_file(self.control_socket());
    }
}

/// The control socket that goes with a pin dir made by [`TempBpffs`].
pub fn control_socket_of(pin_dir: &Path) -> PathBuf {
    let root = pin_dir.parent().expect("pin dir inside the mount");
    PathBuf::from(format!("{}.sock", root.display()))
}

/// Pin a new one-entry array map at `path`, as another tool would: made with
/// the raw `bpf(2)` calls, so nothing about it is the balancer's.
pub fn pin_foreign_map(path: &Path) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // `union bpf_attr` for each command: only the leading fields are used,
    // the rest must be zero.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = [0u64; 4];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64; // bpf_fd in the low 32 bits, file_flags 0
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            pin.as_ptr(),
            std::mem::size_of_val(&pin),
        )
    };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd as i32) };
    assert!(rc == 0, "BPF_OBJ_PIN {}: {err}", path.display());
}
