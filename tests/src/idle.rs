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
//! timeout).

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
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

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
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let (opened, first_answers) = std::sync::mpsc::channel();
        let threads = specs
            .iter()
            .map(|spec| {
                let (spec, stop, opened) = (spec.clone(), Arc::clone(&stop), opened.clone());
                ns.spawn_thread(move || {
                    let session = Session::open(vip, &spec, epoch);
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
}

impl Session {
    /// Runs inside the client namespace (see [`IdleSessions::start`]).
    fn open(vip: SocketAddr, spec: &SessionSpec, epoch: Instant) -> Session {
        let mut session = Session {
            vip,
            record: IdleSession {
                address: spec.address,
                polling: spec.polling,
                backend: None,
                heartbeats: 0,
                failure: None,
                final_answered: false,
            },
            stream: None,
            epoch,
        };
        if !spec.polling {
            match connect_here(spec.address, vip, ANSWER_TIMEOUT) {
                Ok(stream) => session.stream = Some(stream),
                Err(e) => session.fail(format!("connect: {e}")),
            }
        }
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
        if self.record.failure.is_none() {
            self.beat();
            self.record.final_answered = self.record.failure.is_none();
        }
        self.record
    }

    /// One heartbeat: an answer from the session's backend, or a failure.
    fn beat(&mut self) {
        if self.record.failure.is_some() {
            return;
        }
        let answer = match &self.stream {
            Some(stream) => ask(stream),
            None => self.poll(),
        };
        match answer {
            Ok(answer) => match &self.record.backend {
                None => self.record.backend = Some(answer.backend),
                Some(first) if *first == answer.backend => {}
                Some(first) => {
                    let moved = format!("answered by {} instead of {first}", answer.backend);
                    self.fail(moved);
                    return;
                }
            },
            Err(e) => {
                self.fail(format!("heartbeat: {e}"));
                return;
            }
        }
        self.record.heartbeats += 1;
    }

    /// A long poll: a new connection from the session's address.
    fn poll(&self) -> io::Result<Answer> {
        ask(&connect_here(
            self.record.address,
            self.vip,
            ANSWER_TIMEOUT,
        )?)
    }

    fn fail(&mut self, what: String) {
        let at_ms = self.epoch.elapsed().as_millis() as u64;
        self.record.failure = Some((at_ms, what));
    }
}
