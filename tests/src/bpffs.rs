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
