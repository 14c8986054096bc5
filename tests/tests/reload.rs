//! `balancer check`, `balancer reload`, SIGHUP and the systemd notify
//! protocol, as an operator (or systemd) uses them: the real binary in the
//! gateway namespace, real TCP clients, whoami servers on three backends.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use balancer_tests::{
    TIMEOUT, Topology, TopologyOpts, ask,
    bpffs::TempBpffs,
    daemon::{Daemon, backends_toml, balancer, cli, cli_ok, config_head, status},
    require_root,
    servers::Server,
    tcp_ask, tcp_connect,
    topology::VIP_V4,
};
use balancer_user::metrics::Snapshot;

const PORT: u16 = 3000;
const METRICS: &str = "127.0.0.1:9100";

struct Rig {
    topo: Topology,
    bpffs: TempBpffs,
    _servers: Vec<Server>,
    daemon: Option<Daemon>,
}

impl Rig {
    fn new() -> Rig {
        require_root();
        let topo = Topology::new(&TopologyOpts::default());
        let servers = balancer_tests::servers::tcp_whoami_on(topo.backends(), PORT);
        Rig {
            topo,
            bpffs: TempBpffs::new(),
            _servers: servers,
            daemon: None,
        }
    }

    /// A config whose service `web` has the backends `names` (tcp checks).
    fn config(&self, names: &[&str], extra: &str) -> String {
        self.config_with_head(&config_head(&self.bpffs, METRICS), names, extra)
    }

    fn config_with_head(&self, head: &str, names: &[&str], extra: &str) -> String {
        let backends = backends_toml(names.iter().map(|n| self.addr(n)));
        format!(
            "{head}\n[[services]]\nname = \"web\"\nvip = \"{VIP_V4}:80\"\naffinity = \"source-ip\"\n\
             table_size = 1009\n{extra}[services.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\n\
             timeout = \"150ms\"\nrise = 2\nfall = 3\n{backends}"
        )
    }

    fn start(&mut self, config: &str) {
        let mut daemon = Daemon::start(self.topo.gw(), config, &self.bpffs.pin_dir(), &[]);
        daemon.wait_serving(self.topo.gw(), &self.socket());
        self.daemon = Some(daemon);
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// Replace the running daemon's config file.
    fn rewrite(&self, config: &str) {
        std::fs::write(self.daemon().config_path(), config).unwrap();
    }

    fn socket(&self) -> PathBuf {
        self.bpffs.control_socket()
    }

    fn cli(&self, args: &[&str]) -> Output {
        cli(self.topo.gw(), &self.socket(), args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        cli_ok(self.topo.gw(), &self.socket(), args)
    }

    fn status(&self) -> Snapshot {
        status(self.topo.gw(), &self.socket())
    }

    /// `balancer check --config` of `config` (written to a temp file) with
    /// `args`.
    fn check(&self, config: &str, args: &[&str]) -> Output {
        let path = std::env::temp_dir().join(format!(
            "lbt-check-{}.toml",
            balancer_tests::netns::random_suffix()
        ));
        std::fs::write(&path, config).unwrap();
        let mut all = vec!["check", "--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = balancer(self.topo.gw(), &all);
        let _ = std::fs::remove_file(&path);
        out
    }

    fn addr(&self, name: &str) -> SocketAddr {
        let b = self
            .topo
            .backends()
            .iter()
            .find(|b| b.name() == name)
            .unwrap();
        SocketAddr::new(b.v4().into(), PORT)
    }

    fn vip() -> SocketAddr {
        SocketAddr::new(VIP_V4.into(), 80)
    }

    fn backend_of(&self, client: Ipv4Addr) -> String {
        tcp_ask(self.topo.client(), client.into(), Self::vip(), TIMEOUT)
            .unwrap_or_else(|e| panic!("{client}: connection to the VIP: {e}"))
            .backend
    }

    /// The service's backends as `(address, up, weight, draining)`.
    fn backends(&self) -> Vec<(String, bool, u32, bool)> {
        self.status().services[0]
            .backends
            .iter()
            .map(|b| (b.address.clone(), b.up, b.weight, b.draining))
            .collect()
    }

    fn wait_backends(&self, want: &[(&str, bool)]) {
        let want: Vec<(String, bool)> = want
            .iter()
            .map(|(n, up)| (self.addr(n).to_string(), *up))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut now: Vec<(String, bool)> = self
                .backends()
                .into_iter()
                .map(|(a, up, ..)| (a, up))
                .collect();
            now.sort();
            let mut sorted = want.clone();
            sorted.sort();
            if now == sorted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backends {now:?}, want {sorted:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A failed command's stderr, which must be one line.
fn one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    err.trim_end().to_owned()
}

#[test]
fn check_passes_a_good_config_refuses_a_bad_one_and_diffs_against_the_daemon() {
    let mut rig = Rig::new();
    let good = rig.config(&["b1", "b2"], "");

    // No daemon: every check `run` makes, and nothing created.
    let out = rig.check(&good, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "one OK line: {}",
        stdout(&out)
    );
    assert!(stdout(&out).starts_with("OK: "), "{}", stdout(&out));
    assert!(!rig.bpffs.pin_dir().exists(), "check created the pin dir");
    assert!(!rig.socket().exists(), "check left a control socket");

    let bad_iface = good.replace("clients = \"", "clients = \"nosuch");
    let e = one_line_error(&rig.check(&bad_iface, &[]));
    assert!(e.contains("interfaces.clients: no interface named"), "{e}");
    let head = config_head(&rig.bpffs, METRICS).replace(
        &rig.bpffs.pin_dir().display().to_string(),
        "/tmp/not-a-bpffs",
    );
    let e = one_line_error(&rig.check(&rig.config_with_head(&head, &["b1"], ""), &[]));
    assert!(
        e.contains("bpf.pin_dir: /tmp/not-a-bpffs is not on a bpffs"),
        "{e}"
    );
    let e = one_line_error(&rig.check(&good.replace("rise = 2", "rise = \"two\""), &[]));
    assert!(e.contains("rise"), "{e}");
    {
        // Something else holds the metrics address.
        let _held = rig
            .topo
            .gw()
            .run(|| TcpListener::bind(METRICS).expect("bind the metrics address"));
        let e = one_line_error(&rig.check(&good, &[]));
        assert!(
            e.contains("metrics.listen: cannot bind 127.0.0.1:9100"),
            "{e}"
        );
    }
    println!("check: good config OK, bad interface/pin dir/value/bind each one line");

    // With the daemon running its binds are its own; the diff is empty for
    // the same file and lists each change for another.
    rig.start(&good);
    let out = rig.check(&good, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("a daemon serves"), "{}", stdout(&out));
    let out = rig.check(&good, &["--diff"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "", "an equal config diffs as nothing");

    let changed = rig
        .config(&["b2", "b3"], "affinity_timeout = \"1m\"\n")
        .replace("rise = 2", "rise = 3");
    let out = rig.check(&changed, &["--diff"]);
    assert!(out.status.success(), "{out:?}");
    let (b1, b3) = (rig.addr("b1"), rig.addr("b3"));
    assert_eq!(
        stdout(&out),
        format!(
            "~ service web: affinity_timeout 10m -> 1m\n~ service web: health.rise 2 -> 3\n\
             - backend web {b1}\n+ backend web {b3} weight 1\n"
        )
    );
    let moved = changed.replace(
        &rig.bpffs.pin_dir().display().to_string(),
        &rig.bpffs.path().join("other").display().to_string(),
    );
    let e = one_line_error(&rig.check(&moved, &["--diff"]));
    assert!(
        e.contains("a reload would be refused: bpf.pin_dir changed"),
        "{e}"
    );
    // Diffing changed nothing.
    assert_eq!(rig.backends().len(), 2);
    println!("check --diff: nothing for the same file; 4 lines for the changes");
}

#[test]
fn reload_adds_and_removes_backends_and_untouched_clients_keep_theirs() {
    let mut rig = Rig::new();
    rig.start(&rig.config(&["b1", "b2"], ""));
    rig.wait_backends(&[("b1", true), ("b2", true)]);
    let clients = rig.topo.clients_v4().to_vec();
    let before: BTreeMap<Ipv4Addr, String> = clients[..30]
        .iter()
        .map(|&c| (c, rig.backend_of(c)))
        .collect();
    let on_b2 = *before.iter().find(|(_, b)| *b == "b2").unwrap().0;
    let held = tcp_connect(rig.topo.client(), on_b2.into(), Rig::vip(), TIMEOUT).unwrap();
    assert_eq!(ask(&held).unwrap().backend, "b2");

    // b1 out, b3 in.
    rig.rewrite(&rig.config(&["b2", "b3"], ""));
    let out = rig.cli_ok(&["reload"]);
    assert_eq!(
        out,
        format!(
            "- backend web {}\n+ backend web {} weight 1\n",
            rig.addr("b1"),
            rig.addr("b3")
        )
    );
    // b3 takes clients once it passes its checks, as with `backend add`.
    rig.wait_backends(&[("b2", true), ("b3", true)]);
    assert_eq!(
        ask(&held).unwrap().backend,
        "b2",
        "the open connection keeps working on its backend"
    );
    let mut moved = 0;
    for (&c, b) in &before {
        let now = rig.backend_of(c);
        if b == "b2" {
            assert_eq!(now, "b2", "{c} moved off an untouched backend");
        } else {
            assert_ne!(now, "b1", "{c} still on the removed backend");
            moved += 1;
        }
    }
    let on_b3 = clients[30..]
        .iter()
        .filter(|&&c| rig.backend_of(c) == "b3")
        .count();
    assert!(on_b3 > 0, "no new client reached b3");
    println!("reload: b2's clients stayed, {moved} of b1's moved, {on_b3} new clients on b3");

    // The file wins for its own backends; a runtime addition stays (as at
    // a restart) until `backend remove`.
    let b1 = rig.addr("b1").to_string();
    rig.cli_ok(&["backend", "add", "web", &b1]);
    assert_eq!(rig.cli_ok(&["reload"]), "reloaded: no changes\n");
    assert!(
        rig.backends().iter().any(|(a, ..)| *a == b1),
        "the runtime backend stays"
    );
    // A weight change is applied in place.
    rig.rewrite(&rig.config(&["b2", "b3"], "").replace(
        &format!("address = \"{}\"\n", rig.addr("b3")),
        &format!("address = \"{}\"\nweight = 2\n", rig.addr("b3")),
    ));
    assert_eq!(
        rig.cli_ok(&["reload"]),
        format!("~ backend web {}: weight 1 -> 2\n", rig.addr("b3"))
    );
    let s = rig.status();
    let b3 = s.services[0]
        .backends
        .iter()
        .find(|b| b.address == rig.addr("b3").to_string())
        .unwrap();
    assert_eq!(b3.weight, 2);
    drop(held);
}

#[test]
fn a_bad_reload_is_refused_in_one_line_and_changes_nothing() {
    let mut rig = Rig::new();
    let good = rig.config(&["b1", "b2"], "");
    rig.start(&good);
    rig.wait_backends(&[("b1", true), ("b2", true)]);
    let before = rig.backends();
    let c = rig.topo.clients_v4()[0];
    let chosen = rig.backend_of(c);

    let cases = [
        (
            rig.config(&["b3"], "").replace("vip = ", "vip = 80 #"),
            "reload refused:",
        ),
        (
            good.replace("clients = \"", "clients = \"other"),
            "reload refused: interfaces.clients changed",
        ),
        (
            good.replace("[bpf]", "[tables]\nflows = 2000000\n[bpf]"),
            "reload refused: tables.flows changed",
        ),
        (
            good.replace(METRICS, "127.0.0.1:9101"),
            "reload refused: metrics.listen changed",
        ),
    ];
    for (config, expected) in cases {
        rig.rewrite(&config);
        let e = one_line_error(&rig.cli(&["reload"]));
        assert!(e.starts_with(&format!("balancer: {expected}")), "{e}");
        assert_eq!(
            rig.backends(),
            before,
            "a refused reload changed the state ({e})"
        );
        assert_eq!(rig.backend_of(c), chosen);
        println!("refused: {e}");
    }
    // The daemon still reloads a good file.
    rig.rewrite(&rig.config(&["b1", "b2", "b3"], ""));
    assert_eq!(
        rig.cli_ok(&["reload"]),
        format!("+ backend web {} weight 1\n", rig.addr("b3"))
    );
}

#[test]
fn sighup_reloads_and_the_daemon_keeps_running() {
    let mut rig = Rig::new();
    rig.start(&rig.config(&["b1"], ""));
    rig.wait_backends(&[("b1", true)]);

    rig.rewrite(&rig.config(&["b1", "b2"], ""));
    rig.daemon().signal(libc::SIGHUP);
    rig.wait_backends(&[("b1", true), ("b2", true)]);

    // A bad file on SIGHUP: logged, refused, the daemon carries on.
    rig.rewrite("not toml [");
    rig.daemon().signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !rig.daemon.as_mut().unwrap().exited(),
        "SIGHUP ended the daemon"
    );
    rig.wait_backends(&[("b1", true), ("b2", true)]);
    println!("SIGHUP: b2 added; a bad file refused; the daemon still runs");
}

/// The next notify message other than a watchdog ping; how many pings came
/// before it.
fn next_message(socket: &UnixDatagram, pings: &mut usize) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).expect("a notify message in time");
        let text = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
        if text == "WATCHDOG=1" {
            *pings += 1;
            continue;
        }
        return text;
    }
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let mut rig = Rig::new();
    let path = std::env::temp_dir().join(format!(
        "lbt-notify-{}.sock",
        balancer_tests::netns::random_suffix()
    ));
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = rig.config(&["b1", "b2"], "");
    let daemon = Daemon::start_with_env(
        rig.topo.gw(),
        &config,
        &rig.bpffs.pin_dir(),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    rig.daemon = Some(daemon);
    let mut pings = 0;

    assert_eq!(next_message(&socket, &mut pings), "READY=1");
    // READY means attached and serving: no waiting.
    assert_eq!(rig.status().services[0].backends.len(), 2);

    rig.rewrite(&rig.config(&["b1", "b2", "b3"], ""));
    let reload = std::thread::scope(|s| {
        let r = s.spawn(|| rig.cli_ok(&["reload"]));
        let reloading = next_message(&socket, &mut pings);
        let ready = next_message(&socket, &mut pings);
        (r.join().unwrap(), reloading, ready)
    });
    let (out, reloading, ready) = reload;
    assert!(out.starts_with("+ backend web"), "{out}");
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "MONOTONIC_USEC {usec} is not the monotonic clock's now ({now_usec})"
    );
    assert_eq!(ready, "READY=1");

    // Watchdog pings every 100 ms (half of WATCHDOG_USEC).
    let start = Instant::now();
    let before = pings;
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_millis(1000) {
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(buf[..n].trim_ascii_end(), b"WATCHDOG=1");
        pings += 1;
    }
    assert!(
        (before + 6..before + 14).contains(&pings),
        "{} pings in 1 s at a 100 ms period",
        pings - before
    );

    rig.daemon().signal(libc::SIGTERM);
    assert_eq!(next_message(&socket, &mut pings), "STOPPING=1");
    let status = rig
        .daemon
        .take()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_file(&path);
    println!("notify: READY, RELOADING+MONOTONIC_USEC, READY, {pings} watchdog pings, STOPPING");
}
