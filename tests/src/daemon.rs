//! The real `balancer` binary, run as a daemon in the gateway namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use balancer_user::metrics::Snapshot;

use crate::{
    bpffs::TempBpffs,
    netns::NetNs,
    topology::{GW_BACKEND_IF, GW_CLIENT_IF},
};

/// The `balancer` binary under test: `$BALANCER_BIN` (set by `cargo xtask
/// test`), else the workspace's release build.
pub fn balancer_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BALANCER_BIN") {
        return PathBuf::from(bin);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/balancer");
    assert!(
        bin.exists(),
        "no balancer binary at {}: run `cargo xtask build` or set BALANCER_BIN",
        bin.display()
    );
    bin
}

/// Run `balancer ARGS` in `ns` to completion.
pub fn balancer(ns: &NetNs, args: &[&str]) -> Output {
    let bin = balancer_bin();
    let mut all = vec![bin.to_str().unwrap()];
    all.extend_from_slice(args);
    ns.command(all[0], &all[1..])
        .output()
        .expect("run balancer")
}

/// How the network-namespace suites attach the balancer:
/// `BALANCER_TEST_MODE` = `xdp` (the default) or `tc`. `cargo xtask test`
/// runs them in both.
pub fn test_mode() -> &'static str {
    match std::env::var("BALANCER_TEST_MODE").as_deref() {
        Ok("tc") => "tc",
        Ok("xdp") | Err(_) => "xdp",
        Ok(other) => panic!("BALANCER_TEST_MODE must be xdp or tc, not {other:?}"),
    }
}

/// The config sections every test daemon shares: the topology's gateway
/// interfaces in [`test_mode`], metrics on `metrics` (inside the gateway
/// namespace), and the pin dir and control socket of `bpffs` (each test its
/// own). Services follow.
pub fn config_head(bpffs: &TempBpffs, metrics: &str) -> String {
    format!(
        "[interfaces]\nclients = \"{GW_CLIENT_IF}\"\nbackends = \"{GW_BACKEND_IF}\"\nmode = \"{}\"\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [bpf]\npin_dir = \"{}\"\n\
         [control]\nsocket = \"{}\"\n",
        test_mode(),
        bpffs.pin_dir().display(),
        bpffs.control_socket().display()
    )
}

/// `[[services.backends]]` entries, one per address.
pub fn backends_toml(addresses: impl IntoIterator<Item = std::net::SocketAddr>) -> String {
    addresses
        .into_iter()
        .map(|a| format!("[[services.backends]]\naddress = \"{a}\"\n"))
        .collect()
}

/// `[[services.backends]]` entries for `backends` on `port`, each with its
/// `name` (`b1`, ...: the session-id prefix of `affinity = "sid"`).
pub fn named_backends_toml(backends: &[crate::Backend], port: u16) -> String {
    backends
        .iter()
        .map(|b| {
            format!(
                "[[services.backends]]\naddress = \"{}:{port}\"\nname = \"{}\"\n",
                b.v4(),
                b.name()
            )
        })
        .collect()
}

/// `balancer ARGS --socket SOCKET` in `ns`.
pub fn cli(ns: &NetNs, socket: &Path, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--socket", socket.to_str().unwrap()]);
    balancer(ns, &all)
}

/// `balancer ARGS`, which must succeed; its stdout.
pub fn cli_ok(ns: &NetNs, socket: &Path, args: &[&str]) -> String {
    let out = cli(ns, socket, args);
    assert!(
        out.status.success(),
        "balancer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `balancer status --json`, parsed.
pub fn status(ns: &NetNs, socket: &Path) -> Snapshot {
    serde_json::from_str(&cli_ok(ns, socket, &["status", "--json"]))
        .expect("status --json is a Snapshot")
}

/// A running `balancer run`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    config: PathBuf,
}

impl Daemon {
    /// Write `config` to a temp file and start the daemon in `ns`; returns
    /// once every link in `ready_pins` (names under `pin_dir`) is pinned.
    pub fn start(ns: &NetNs, config: &str, pin_dir: &Path, ready_pins: &[&str]) -> Daemon {
        Self::start_with(ns, config, pin_dir, ready_pins, &[], &[], Stdio::inherit())
    }

    /// [`Daemon::start`] with `env` added to the daemon's environment.
    pub fn start_with_env(
        ns: &NetNs,
        config: &str,
        pin_dir: &Path,
        ready_pins: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::start_with(ns, config, pin_dir, ready_pins, &[], env, Stdio::inherit())
    }

    /// [`start`](Self::start) with more `balancer run` arguments, `env`
    /// added to its environment, and its stderr (the logs) going to
    /// `stderr`; [`stop_logs`](Self::stop_logs) reads them when it is
    /// [`Stdio::piped`].
    pub fn start_with(
        ns: &NetNs,
        config: &str,
        pin_dir: &Path,
        ready_pins: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Daemon {
        let path =
            std::env::temp_dir().join(format!("lbt-config-{}.toml", crate::netns::random_suffix()));
        std::fs::write(&path, config).expect("write config");
        let bin = balancer_bin();
        let mut all = vec!["run", "--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let child = ns
            .command(bin.to_str().unwrap(), all)
            .envs(env.iter().copied())
            .stdout(Stdio::inherit())
            .stderr(stderr)
            .spawn()
            .expect("spawn balancer run");
        let mut daemon = Daemon {
            child,
            config: path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready_pins.iter().all(|p| pin_dir.join(p).exists()) {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("balancer run exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "balancer run not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// Has it not exited?
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the daemon was started with (`balancer reload` and
    /// SIGHUP read it again).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Send `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Has the daemon exited?
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Wait until the daemon answers `balancer status` on `socket`: it has
    /// attached and serves the control socket.
    pub fn wait_serving(&mut self, ns: &NetNs, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cli(ns, socket, &["status", "--json"]).status.success() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("balancer run exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "balancer run not serving {} after 30 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (at most `limit`) for the daemon to exit by itself.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "balancer run still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the daemon gets no chance to clean up.
    pub fn kill9(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    /// SIGTERM and wait; the exit status and everything it wrote to a
    /// piped stderr.
    pub fn stop_logs(mut self) -> (std::process::ExitStatus, String) {
        let stderr = self
            .child
            .stderr
            .take()
            .expect("started with a piped stderr");
        // Read while it stops, so a full pipe cannot block its last lines.
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut { stderr }, &mut text).expect("read stderr");
            text
        });
        let status = self.terminate();
        (status, reader.join().unwrap())
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Is the balancer attached to `ifname` in `ns` in [`test_mode`]?
pub fn attached(ns: &NetNs, ifname: &str) -> bool {
    if test_mode() == "xdp" {
        let out = Command::new("ip")
            .args(["-n", ns.name(), "-d", "link", "show", ifname])
            .output()
            .expect("ip link");
        return String::from_utf8_lossy(&out.stdout).contains("prog/xdp");
    }
    tc_attached(ns, ifname)
}

/// Is `balancer_tc` on `ifname`'s ingress: as a TCX link (6.6+), or as a
/// cls_bpf filter (older kernels, where the TCX query fails)?
fn tc_attached(ns: &NetNs, ifname: &str) -> bool {
    use aya::programs::{SchedClassifier, TcAttachType};
    use balancer_common::maps::PROG_TC;
    let name = ifname.to_owned();
    let tcx = ns.run(move || {
        SchedClassifier::query_tcx(&name, TcAttachType::Ingress)
            .map(|(_, programs)| programs.iter().any(|p| p.name_as_str() == Some(PROG_TC)))
    });
    if let Ok(found) = tcx {
        return found;
    }
    let out = Command::new("tc")
        .args(["-n", ns.name(), "filter", "show", "dev", ifname, "ingress"])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).contains(PROG_TC)
}
