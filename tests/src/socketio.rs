//! Real Socket.IO (npm's `socket.io` and `socket.io-client`, installed into
//! `tests/socketio/node_modules` by `cargo xtask test`): server processes in
//! backend namespaces and a client driver in the client namespace whose
//! JSON-lines report says, per session, which servers it reached and every
//! error a user would have seen (see `tests/socketio/driver.js`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc::{self, Receiver},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::netns::{NetNs, random_suffix};

fn dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("socketio");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "no npm packages in {}: `cargo xtask test` installs them (npm ci --prefix tests/socketio)",
        dir.display()
    );
    dir
}

/// A `node server.js NAME PORT` in a backend namespace; killed on drop.
pub struct SocketIoServer {
    child: Child,
}

/// How often a server pings its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Every second (timeout 2 s): a long-polling session makes a new
    /// request every second, so short runs see many connections.
    Fast,
    /// Socket.IO's defaults (ping every 25 s, timeout 20 s): what idle
    /// sessions do in production.
    Default,
}

impl SocketIoServer {
    /// Start it with [`Heartbeat::Fast`] and wait until it listens.
    pub fn start(ns: &NetNs, name: &str, port: u16) -> Self {
        Self::start_with(ns, name, port, Heartbeat::Fast)
    }

    /// Start it with `heartbeat` and wait until it listens.
    pub fn start_with(ns: &NetNs, name: &str, port: u16, heartbeat: Heartbeat) -> Self {
        Self::spawn(ns, name, port, heartbeat, false)
    }

    /// Start it with [`Heartbeat::Fast`] and session ids `NAME.<uuid>`
    /// (what `affinity = "sid"` routes by); wait until it listens.
    pub fn start_sid_prefixed(ns: &NetNs, name: &str, port: u16) -> Self {
        Self::spawn(ns, name, port, Heartbeat::Fast, true)
    }

    fn spawn(ns: &NetNs, name: &str, port: u16, heartbeat: Heartbeat, sid_prefix: bool) -> Self {
        let script = dir().join("server.js");
        let mut args = vec![
            script.to_str().unwrap().to_owned(),
            name.to_owned(),
            port.to_string(),
        ];
        if heartbeat == Heartbeat::Default {
            args.push("default-heartbeat".into());
        }
        let mut command = ns.command("node", args);
        if sid_prefix {
            command.env("SID_PREFIX", "1");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node server.js");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("server output");
        assert!(line.starts_with("ready"), "{name}: server.js said {line:?}");
        SocketIoServer { child }
    }

    /// Kill the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SocketIoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client session to drive.
#[derive(Clone, Debug, Serialize)]
pub struct SessionSpec {
    pub address: IpAddr,
    /// Long-polling only (never upgrades).
    pub polling: bool,
    /// More local addresses: the session's connections bind `address` and
    /// these in turn (a client whose address changes between requests).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

impl SessionSpec {
    /// A session whose connections all bind `address`.
    pub fn new(address: IpAddr, polling: bool) -> Self {
        Self {
            address,
            polling,
            addresses: Vec::new(),
        }
    }
}

/// Sessions from `addresses`: for each, one long-polling-only session and
/// `default_per_address` with the default transports (long-polling, then
/// the WebSocket upgrade).
pub fn sessions(addresses: &[Ipv4Addr], default_per_address: usize) -> Vec<SessionSpec> {
    addresses
        .iter()
        .flat_map(|&a| {
            std::iter::once(SessionSpec::new(a.into(), true)).chain(std::iter::repeat_n(
                SessionSpec::new(a.into(), false),
                default_per_address,
            ))
        })
        .collect()
}

#[derive(Serialize)]
struct DriverConfig<'a> {
    url: String,
    sessions: &'a [SessionSpec],
    duration_ms: u64,
    /// 0: no periodic messages.
    interval_ms: u64,
    ack_timeout_ms: u64,
    reconnection_delay_ms: u64,
    ready_timeout_ms: u64,
    /// Every session sends one acknowledged message before closing.
    final_message: bool,
    /// The run also ends on a `finish` line on stdin.
    finish_on_stdin: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SessionError {
    pub kind: String,
    pub detail: String,
    pub at_ms: u64,
    /// The session's server when it happened.
    pub server: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Reconnect {
    pub from: Option<String>,
    pub to: String,
    pub after_ms: u64,
}

/// One session's report.
#[derive(Clone, Debug, Deserialize)]
pub struct Session {
    pub id: usize,
    pub address: String,
    pub polling: bool,
    /// The server holding the session at the end.
    pub server: Option<String>,
    /// Every server it was on, in order.
    pub servers: Vec<String>,
    pub acks: u64,
    pub upgraded: bool,
    /// The first few errors (all are counted in `error_count`).
    pub errors: Vec<SessionError>,
    pub error_count: usize,
    pub reconnects: Vec<Reconnect>,
    pub connected: bool,
    /// Its final message was acknowledged by its own server (runs with a
    /// final message only).
    pub final_acked: bool,
    /// The local port of each TCP connection it opened, in order.
    pub ports: Vec<u16>,
    /// The local address of each TCP connection it opened, in order.
    pub local_addresses: Vec<IpAddr>,
}

/// A running `node driver.js`.
pub struct Driver {
    child: Child,
    lines: Receiver<serde_json::Value>,
    config: PathBuf,
}

impl Driver {
    /// Drive `sessions` against `url` (the VIP) for `duration` after they
    /// are all connected; every session sends an acknowledged message every
    /// 200 ms.
    pub fn start(
        ns: &NetNs,
        vip: SocketAddr,
        sessions: &[SessionSpec],
        duration: Duration,
    ) -> Self {
        Self::spawn(
            ns,
            DriverConfig {
                url: format!("http://{vip}"),
                sessions,
                duration_ms: duration.as_millis() as u64,
                interval_ms: 200,
                ack_timeout_ms: 3000,
                reconnection_delay_ms: 200,
                ready_timeout_ms: 15_000,
                final_message: false,
                finish_on_stdin: false,
            },
        )
    }

    /// Idle `sessions` against the VIP: once connected they send nothing
    /// but Socket.IO's heartbeats until [`Driver::stop`] (or `limit` after
    /// they are all connected), then one acknowledged message each.
    pub fn start_idle(
        ns: &NetNs,
        vip: SocketAddr,
        sessions: &[SessionSpec],
        limit: Duration,
    ) -> Self {
        Self::spawn(
            ns,
            DriverConfig {
                url: format!("http://{vip}"),
                sessions,
                duration_ms: limit.as_millis() as u64,
                interval_ms: 0,
                ack_timeout_ms: 5000,
                reconnection_delay_ms: 200,
                ready_timeout_ms: 15_000,
                final_message: true,
                finish_on_stdin: true,
            },
        )
    }

    fn spawn(ns: &NetNs, cfg: DriverConfig) -> Self {
        let config = std::env::temp_dir().join(format!("lbt-sio-{}.json", random_suffix()));
        std::fs::write(&config, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let script = dir().join("driver.js");
        let mut child = ns
            .command("node", [script.to_str().unwrap(), config.to_str().unwrap()])
            .stdin(if cfg.finish_on_stdin {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node driver.js");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("driver: {line}"),
                }
            }
        });
        Driver {
            child,
            lines,
            config,
        }
    }

    /// Wait for event `name` (other events are passed over); panics after
    /// `limit`.
    pub fn wait_for(&self, name: &str, limit: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == name => return v,
                Ok(_) => {}
                Err(e) => panic!("driver: no {name:?} event within {limit:?} ({e})"),
            }
        }
    }

    /// End a [`Driver::start_idle`] run now (final messages, then the
    /// report); every session's report.
    pub fn stop(mut self) -> Vec<Session> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .expect("stop() ends idle runs only");
        stdin
            .write_all(b"finish\n")
            .expect("tell driver.js to finish");
        self.finish()
    }

    /// Wait for the end of the run; every session's report.
    pub fn finish(self) -> Vec<Session> {
        let summary = self.wait_for("summary", Duration::from_secs(120));
        serde_json::from_value(summary["sessions"].clone()).expect("driver summary")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Session errors in all, every one counted.
pub fn error_total(sessions: &[Session]) -> usize {
    sessions.iter().map(|s| s.error_count).sum()
}

/// The errors kept of every session (the first few of each).
pub fn errors(sessions: &[Session]) -> Vec<(usize, &SessionError)> {
    sessions
        .iter()
        .flat_map(|s| s.errors.iter().map(move |e| (s.id, e)))
        .collect()
}

/// Prints the run's totals (sessions, transports, acks, sessions per first
/// server, errors by kind and a few examples); returns the number of
/// session errors.
pub fn report(scenario: &str, sessions: &[Session]) -> usize {
    let errs = errors(sessions);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, e) in &errs {
        *by_kind.entry(e.kind.as_str()).or_default() += 1;
    }
    let acks: u64 = sessions.iter().map(|s| s.acks).sum();
    let connected = sessions.iter().filter(|s| s.connected).count();
    let upgraded = sessions.iter().filter(|s| s.upgraded).count();
    println!(
        "{scenario}: {} sessions ({} polling-only, {upgraded} upgraded to WebSocket), {connected} connected, {acks} acked messages, sessions per first server {:?}, session errors {} (kinds, first 10 per session: {by_kind:?})",
        sessions.len(),
        sessions.iter().filter(|s| s.polling).count(),
        per_first_server(sessions),
        error_total(sessions),
    );
    for (id, e) in errs.iter().take(5) {
        println!(
            "  e.g. session {id}: {} {} (on {:?}, at {} ms)",
            e.kind, e.detail, e.server, e.at_ms
        );
    }
    error_total(sessions)
}

/// Sessions per first server (`none`: never connected).
pub fn per_first_server(sessions: &[Session]) -> BTreeMap<String, usize> {
    let mut per_server = BTreeMap::new();
    for s in sessions {
        *per_server
            .entry(s.servers.first().cloned().unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    per_server
}

/// No session error, and every session connected, stayed on one server
/// and had messages acknowledged.
pub fn assert_clean(scenario: &str, sessions: &[Session]) {
    let n = report(scenario, sessions);
    assert_eq!(n, 0, "{scenario}: session errors");
    for s in sessions {
        assert!(
            s.connected && s.servers.len() == 1 && s.acks > 0,
            "{scenario}: session {s:?}"
        );
    }
}
