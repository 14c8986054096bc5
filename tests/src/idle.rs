//! Idle sessions of Socket.IO's shape in plain TCP, against the whoami
//! servers ([`crate::tcp_whoami`]), for rigs where Node cannot keep
//! Socket.IO's heartbeats (the `--vm` guest runs under TCG emulation).
//!
//! Each session sends one heartbeat per interval and nothing else, as
//! Socket.IO's default 25 s ping does, so to an LRU table it looks older
//! than any flow a flood makes:
//! - an upgraded one holds one connection, and asks on it each beat;
//! - a long-polling one opens a new connection from its address each beat
//!   (the next poll), which reaches its backend only through affinity
//!   when its Maglev slot has moved.
//!
//! Every answer must come from the backend the session's first answer
//! came from. The first failure ends the session: a Socket.IO client would
//! have lost its session there (`400 Session ID unknown`, or a ping
//! timeout). Sessions started with [`IdleSessions::start_retrying`] instead
//! retry a heartbeat that got no answer, as a Socket.IO client reconnects
//! (an upgraded one on a new connection), and only an answer from another
//! backend ends them: for rigs where a path may fail for a while and the
//! session must hold across it.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    NetNs,
    servers::{Answer, ask, connect_here},
    socketio::SessionSpec,
};

/// A connect or an answer slower than this is a failure (Socket.IO's own
/// ping timeout is 20 s; this is a quarter of it).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One session's record.
#[derive(Debug, Clone)]
pub struct IdleSession {
    pub address: IpAddr,
    pub polling: bool,
    /// The backend of the first answer.
    pub backend: Option<String>,
    pub heartbeats: u64,
    /// The first failure, and when (ms since the sessions started).
    pub failure: Option<(u64, String)>,
    /// Heartbeats that got no answer and were retried
    /// ([`IdleSessions::start_retrying`]), and when, as `failure`.
    pub retried: Vec<(u64, String)>,
    /// The local port of every connection the session opened.
    pub ports: Vec<u16>,
    /// The longest a heartbeat took, answered or not, and when it started
    /// (ms since the sessions started).
    pub slowest: (Duration, u64),
    /// The answer to the last heartbeat, after [`IdleSessions::stop`]
    /// asked for it.
    pub final_answered: bool,
}

/// Sessions running, one thread each.
pub struct IdleSessions {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<IdleSession>>,
    /// When the sessions started: failures' times count from here.
    pub epoch: Instant,
}

impl IdleSessions {
    /// Open every session from `ns` to `vip`, each on a thread of its own
    /// inside `ns`, and beat every `heartbeat`. Returns once every session
    /// has its first answer (or has failed).
    pub fn start(
        ns: &NetNs,
        vip: SocketAddr,
        specs: &[SessionSpec],
        heartbeat: Duration,
    ) -> IdleSessions {
        Self::start_with(ns, vip, specs, heartbeat, false)
    }

    /// [`IdleSessions::start`], for sessions that retry a heartbeat that
    /// got no answer (see the module doc).
    pub fn start_retrying(
        ns: &NetNs,
        vip: SocketAddr,
        specs: &[SessionSpec],
        heartbeat: Duration,
    ) -> IdleSessions {
        Self::start_with(ns, vip, specs, heartbeat, true)
    }

    fn start_with(
        ns: &NetNs,
        vip: SocketAddr,
        specs: &[SessionSpec],
        heartbeat: Duration,
        retry: bool,
    ) -> IdleSessions {
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let (opened, first_answers) = std::sync::mpsc::channel();
        let threads = specs
            .iter()
            .map(|spec| {
                let (spec, stop, opened) = (spec.clone(), Arc::clone(&stop), opened.clone());
                ns.spawn_thread(move || {
                    let session = Session::open(vip, &spec, epoch, retry);
                    let _ = opened.send(());
                    session.run(heartbeat, &stop)
                })
            })
            .collect::<Vec<_>>();
        for _ in 0..threads.len() {
            first_answers
                .recv()
                .expect("a session thread ended before its first answer");
        }
        IdleSessions {
            stop,
            threads,
            epoch,
        }
    }

    /// One last heartbeat each (the final acknowledged message), then the
    /// records.
    pub fn stop(self) -> Vec<IdleSession> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a session thread"))
            .collect()
    }
}

struct Session {
    vip: SocketAddr,
    record: IdleSession,
    /// An upgraded session's connection.
    stream: Option<TcpStream>,
    epoch: Instant,
    /// Retry a heartbeat that got no answer.
    retry: bool,
}

impl Session {
    /// Runs inside the client namespace (see [`IdleSessions::start`]).
    fn open(vip: SocketAddr, spec: &SessionSpec, epoch: Instant, retry: bool) -> Session {
        let mut session = Session {
            vip,
            record: IdleSession {
                address: spec.address,
                polling: spec.polling,
                backend: None,
                heartbeats: 0,
                failure: None,
                retried: Vec::new(),
                ports: Vec::new(),
                slowest: (Duration::ZERO, 0),
                final_answered: false,
            },
            stream: None,
            epoch,
            retry,
        };
        session.beat();
        session
    }

    fn run(mut self, heartbeat: Duration, stop: &AtomicBool) -> IdleSession {
        let mut next = Instant::now() + heartbeat;
        while self.record.failure.is_none() && !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                self.beat();
                next += heartbeat;
            }
            thread::sleep(Duration::from_millis(100));
        }
        self.record.final_answered = self.beat();
        self.record
    }

    /// One heartbeat: an answer from the session's backend (true), or a
    /// failure, or a retry (false); false once the session failed.
    fn beat(&mut self) -> bool {
        if self.record.failure.is_some() {
            return false;
        }
        let started = Instant::now();
        let answer = self.ask();
        let took = started.elapsed();
        if took > self.record.slowest.0 {
            let at_ms = started.duration_since(self.epoch).as_millis() as u64;
            self.record.slowest = (took, at_ms);
        }
        match answer {
            Ok(answer) => match &self.record.backend {
                None => self.record.backend = Some(answer.backend),
                Some(first) if *first == answer.backend => {}
                Some(first) => {
                    let moved = format!("answered by {} instead of {first}", answer.backend);
                    self.fail(moved);
                    return false;
                }
            },
            Err(e) if self.retry => {
                // The next beat reconnects an upgraded session.
                self.stream = None;
                let at_ms = self.epoch.elapsed().as_millis() as u64;
                self.record.retried.push((at_ms, format!("heartbeat: {e}")));
                return false;
            }
            Err(e) => {
                self.fail(format!("heartbeat: {e}"));
                return false;
            }
        }
        self.record.heartbeats += 1;
        true
    }

    /// One question: on the upgraded session's connection (opened first if
    /// it has none), or, for a long poll, on a new one.
    fn ask(&mut self) -> io::Result<Answer> {
        if self.record.polling {
            return ask(&self.connect()?);
        }
        let stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.connect()?,
        };
        let answer = ask(&stream);
        self.stream = Some(stream);
        answer
    }

    /// A new connection from the session's address.
    fn connect(&mut self) -> io::Result<TcpStream> {
        let stream = connect_here(self.record.address, self.vip, ANSWER_TIMEOUT)?;
        self.record.ports.push(stream.local_addr()?.port());
        Ok(stream)
    }

    fn fail(&mut self, what: String) {
        let at_ms = self.epoch.elapsed().as_millis() as u64;
        self.record.failure = Some((at_ms, what));
    }
}
