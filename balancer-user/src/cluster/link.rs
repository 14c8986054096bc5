//! The TCP links between gateways. Each gateway keeps one connection to
//! each peer (it reconnects with backoff) and accepts theirs:
//!
//! - client → server: `Hello`, then, after `HelloAck`, a `SyncRequest`
//!   (every connection, so a gateway that starts or was cut off pulls its
//!   peer's admin state and entries first), the entries it announces, a
//!   `Ping` a second, and this gateway's backend changes (`Propose`, and
//!   `Cancel` if another peer refused one);
//! - server → client: `HelloAck`, the sync's `AdminState` frames, entries
//!   and `SyncDone`, a `Pong` per ping, an `Answer` per proposal.
//!
//! A frame that fails any check ends its connection, counted by reason
//! (`wire::Reject`), and changes nothing; an entry naming a service or
//! backend this gateway lacks is skipped, counted, and the rest applied.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::{broadcast, mpsc, oneshot, watch},
    time::{interval, sleep, timeout},
};
use tracing::{debug, info, warn};

use super::{
    Readiness,
    admin::{self, Admin, AdminState, Outboxes, Outgoing, Scheduled},
    directory::Directory,
    stats::{PeerStats, Stats},
    table::Table,
    wire::{
        self, Entry, MAX_ENTRIES, Message, NONCE_LEN, Opener, Reject, Sealer, Side,
        admin_state_messages, session_key,
    },
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The other side's handshake frame must come within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(1);
/// A link that heard nothing this long (five pings) is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Entries to send to every peer, as one frame.
#[derive(Debug)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// When the ages were taken: they are aged by the time since when sent.
    pub taken: Instant,
    /// New entries from the kernel: the oldest one's age when taken, for the
    /// lag estimate. `None` for re-announcements.
    pub oldest_ns: Option<u64>,
}

/// What every link shares.
pub struct Shared {
    pub secret: Vec<u8>,
    pub directory: watch::Receiver<Directory>,
    pub table: Arc<Mutex<Table>>,
    pub stats: Stats,
    pub announce: broadcast::Sender<Arc<Batch>>,
    pub ready: watch::Sender<Readiness>,
    /// The daemon, for backend changes and admin state.
    pub admin: Arc<dyn Admin>,
    /// Each linked peer's client link, for proposals.
    pub outboxes: Outboxes,
    /// Peers' changes waiting for their instant.
    pub scheduled: Arc<Scheduled>,
}

/// Why a frame could not be read.
enum ReadError {
    Reject(Reject),
    Io(std::io::Error),
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut prefix = [0; 4];
    r.read_exact(&mut prefix).await.map_err(ReadError::Io)?;
    let len = wire::body_len(prefix).map_err(ReadError::Reject)?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.map_err(ReadError::Io)?;
    Ok(body)
}

/// Read and open frames until one fails; each goes to `tx`, the failure
/// last.
async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    mut opener: Opener,
    tx: mpsc::Sender<Result<Message, ReadError>>,
) {
    loop {
        let message = read_frame(&mut r)
            .await
            .and_then(|body| opener.open(&body).map_err(ReadError::Reject));
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            return;
        }
    }
}

/// The handshake frame from the other side, opened with the shared key.
async fn handshake_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    sender: Side,
    secret: &[u8],
    stats: &PeerStats,
) -> anyhow::Result<Message> {
    let frame = timeout(HANDSHAKE_TIMEOUT, read_frame(r))
        .await
        .context("no handshake in time")?;
    let opened = match frame {
        Ok(body) => Opener::handshake(secret, sender).open(&body),
        Err(ReadError::Reject(r)) => Err(r),
        Err(ReadError::Io(e)) => return Err(e).context("reading the handshake"),
    };
    opened.map_err(|reason| {
        stats.rejected(reason);
        anyhow::anyhow!("handshake refused: {reason}")
    })
}

pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0; NONCE_LEN];
    // SAFETY: writes at most `n.len()` bytes into `n`.
    let got = unsafe { libc::getrandom(n.as_mut_ptr().cast(), n.len(), 0) };
    assert_eq!(got, NONCE_LEN as isize, "getrandom failed");
    n
}

fn millis_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Apply received entries; an entry naming nothing here is counted and
/// skipped.
fn apply(shared: &Shared, stats: &PeerStats, entries: &[Entry]) {
    let directory = shared.directory.borrow();
    let mut table = shared.table.lock().unwrap_or_else(PoisonError::into_inner);
    for e in entries {
        match directory.incoming(e) {
            Err(reason) => stats.rejected(reason),
            Ok(local) => match table.apply(&local, u64::from(e.age_ms) * 1_000_000) {
                Ok(applied) => stats.received(applied),
                Err(error) => warn!("cluster: applying a received entry: {error:#}"),
            },
        }
    }
}

/// Write `batch`, its ages brought up to now.
async fn send_batch(
    w: &mut OwnedWriteHalf,
    sealer: &mut Sealer,
    batch: &Batch,
    stats: &PeerStats,
) -> anyhow::Result<()> {
    let waited = batch.taken.elapsed();
    let waited_ms = waited.as_millis() as u32;
    let entries: Vec<Entry> = batch
        .entries
        .iter()
        .map(|e| Entry {
            age_ms: e.age_ms.saturating_add(waited_ms),
            ..*e
        })
        .collect();
    w.write_all(&sealer.seal(&Message::Entries(entries)))
        .await?;
    stats.sent(batch.entries.len());
    if let Some(oldest) = batch.oldest_ns {
        stats.lag((oldest + waited.as_nanos() as u64) / 1000);
    }
    Ok(())
}

/// This gateway's link to `peer`, for as long as the daemon runs.
pub async fn connect_forever(shared: Arc<Shared>, peer: SocketAddr) {
    let mut backoff = MIN_BACKOFF;
    let mut logged_down = false;
    loop {
        let started = Instant::now();
        let result = client_session(&shared, peer).await;
        let stats = shared.stats.peer(peer);
        let was_up = stats.is_connected();
        stats.set_connected(false);
        if let Err(e) = result
            && (was_up || !logged_down)
        {
            warn!("cluster: link to {peer} down: {e:#}");
            logged_down = true;
        }
        if was_up || started.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn client_session(shared: &Shared, peer: SocketAddr) -> anyhow::Result<()> {
    let stats = shared.stats.peer(peer);
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(peer))
        .await
        .context("connect timed out")?
        .context("connect")?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let ours = nonce();
    w.write_all(
        &Sealer::handshake(&shared.secret, Side::Client).seal(&Message::Hello { nonce: ours }),
    )
    .await?;
    let theirs = match handshake_frame(&mut r, Side::Server, &shared.secret, stats).await? {
        Message::HelloAck {
            client_nonce,
            server_nonce,
        } if client_nonce == ours => server_nonce,
        Message::HelloAck { .. } => {
            stats.rejected(Reject::Replay);
            bail!("the handshake answered another nonce");
        }
        _ => {
            stats.rejected(Reject::Malformed);
            bail!("expected the handshake's answer");
        }
    };
    let key = session_key(&shared.secret, &ours, &theirs);
    let mut sealer = Sealer::session(key.clone(), Side::Client);
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_loop(r, Opener::session(key, Side::Server), tx));
    let _reader = AbortOnDrop(reader);
    let mut announcements = shared.announce.subscribe();
    let mut outbox = shared.outboxes.open(peer);
    let _outbox = CloseOutbox(&shared.outboxes, peer);
    // Proposals sent and not answered yet: dropped with the link, which
    // their proposer sees.
    let mut awaiting: HashMap<u64, oneshot::Sender<Option<String>>> = HashMap::new();
    let mut their_state = AdminState::default();
    stats.set_connected(true);
    stats.heard();
    info!("cluster: linked to {peer}; pulling its admin state and entries");
    w.write_all(&sealer.seal(&Message::SyncRequest)).await?;
    let start = Instant::now();
    let mut last_heard = Instant::now();
    let mut ping = interval(PING_EVERY);
    loop {
        tokio::select! {
            out = outbox.recv() => match out {
                Some(Outgoing::Propose(proposal, answer)) => {
                    awaiting.insert(proposal.id, answer);
                    w.write_all(&sealer.seal(&Message::Propose(proposal))).await?;
                }
                Some(Outgoing::Cancel(id)) => {
                    w.write_all(&sealer.seal(&Message::Cancel { id })).await?;
                }
                None => return Ok(()),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    bail!("nothing heard for {IDLE_TIMEOUT:?}");
                }
                w.write_all(&sealer.seal(&Message::Ping { t_ms: millis_since(start) })).await?;
            }
            batch = announcements.recv() => match batch {
                Ok(batch) => send_batch(&mut w, &mut sealer, &batch, stats).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!("cluster: link to {peer} fell {n} batches behind; the next re-announcement resends what is active");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            message = rx.recv() => {
                let message = received(message, stats)?;
                last_heard = Instant::now();
                match message {
                    Message::Entries(entries) => apply(shared, stats, &entries),
                    Message::Answer { id, refusal } => {
                        if let Some(answer) = awaiting.remove(&id) {
                            let _ = answer.send(refusal);
                        }
                    }
                    Message::AdminState { version, more, services } => {
                        their_state.version = version;
                        their_state.extend(services);
                        if !more {
                            adopt(shared, peer, std::mem::take(&mut their_state)).await;
                        }
                    }
                    Message::SyncDone { entries } => {
                        stats.synced(entries);
                        info!("cluster: synced {entries} entries from {peer}");
                        shared.ready.send_if_modified(|r| {
                            let waiting = *r == Readiness::Waiting;
                            if waiting {
                                *r = Readiness::Ready(format!("synced {entries} entries from {peer}"));
                            }
                            waiting
                        });
                    }
                    Message::Pong { t_ms } => {
                        stats.rtt(start.elapsed().as_micros() as u64 - t_ms * 1000);
                    }
                    _ => {
                        stats.rejected(Reject::Malformed);
                        bail!("unexpected message from the server");
                    }
                }
            }
        }
    }
}

/// Adopt `peer`'s admin state if this gateway is behind it. Awaited before
/// the sync's entries are read, so they find the backends they name.
async fn adopt(shared: &Shared, peer: SocketAddr, state: AdminState) {
    let admin = Arc::clone(&shared.admin);
    let version = state.version;
    match tokio::task::spawn_blocking(move || admin.adopt(&state)).await {
        Ok(Ok(Some(changed))) => {
            info!("cluster: adopted the admin state of {peer} (version {version}): {changed}");
        }
        Ok(Ok(None)) => debug!("cluster: not behind {peer} (its admin version {version})"),
        Ok(Err(e)) => warn!("cluster: adopting the admin state of {peer}: {e:#}"),
        Err(e) => warn!("cluster: adopting the admin state of {peer}: {e}"),
    }
}

/// A message from the reader task, or the reason the link ends (counted).
fn received(
    message: Option<Result<Message, ReadError>>,
    stats: &PeerStats,
) -> anyhow::Result<Message> {
    match message {
        Some(Ok(m)) => {
            stats.heard();
            Ok(m)
        }
        Some(Err(ReadError::Reject(reason))) => {
            stats.rejected(reason);
            bail!("message refused: {reason}")
        }
        Some(Err(ReadError::Io(e))) => Err(e).context("reading"),
        None => bail!("reader ended"),
    }
}

/// Take peers' connections for as long as the daemon runs.
pub async fn accept_forever(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("cluster: accepting a connection: {e}");
                sleep(MIN_BACKOFF).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Some(peer) = shared.stats.peer_at(from.ip()) else {
                shared.stats.unknown().rejected(Reject::UnknownPeer);
                debug!("cluster: refused a connection from {from}: not a peer");
                return;
            };
            if let Err(e) = server_session(&shared, stream, peer).await {
                debug!("cluster: connection from {from} ({peer}) ended: {e:#}");
            }
        });
    }
}

async fn server_session(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let stats = shared.stats.peer(peer);
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let Message::Hello { nonce: theirs } =
        handshake_frame(&mut r, Side::Client, &shared.secret, stats).await?
    else {
        stats.rejected(Reject::Malformed);
        bail!("expected a handshake");
    };
    let ours = nonce();
    w.write_all(
        &Sealer::handshake(&shared.secret, Side::Server).seal(&Message::HelloAck {
            client_nonce: theirs,
            server_nonce: ours,
        }),
    )
    .await?;
    let key = session_key(&shared.secret, &theirs, &ours);
    let mut sealer = Sealer::session(key.clone(), Side::Server);
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_loop(r, Opener::session(key, Side::Client), tx));
    let _reader = AbortOnDrop(reader);
    let mut last_heard = Instant::now();
    let mut tick = interval(PING_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    bail!("nothing heard for {IDLE_TIMEOUT:?}");
                }
            }
            message = rx.recv() => {
                let message = received(message, stats)?;
                last_heard = Instant::now();
                match message {
                    Message::Entries(entries) => apply(shared, stats, &entries),
                    Message::SyncRequest => {
                        send_sync(shared, &mut w, &mut sealer, stats).await?;
                        // The client's pings queued meanwhile: a long sync
                        // is no silence.
                        last_heard = Instant::now();
                    }
                    Message::Ping { t_ms } => {
                        w.write_all(&sealer.seal(&Message::Pong { t_ms })).await?;
                    }
                    Message::Propose(proposal) => {
                        let admin = Arc::clone(&shared.admin);
                        let change = proposal.change.clone();
                        let at = proposal.apply_at_ms;
                        let refusal = tokio::task::spawn_blocking(move || {
                            admin::check_instant(at).and_then(|()| admin.check(&change))
                        })
                        .await?
                        .err();
                        let id = proposal.id;
                        match &refusal {
                            None => shared.scheduled.schedule(Arc::clone(&shared.admin), peer, proposal),
                            Some(reason) => info!("cluster: refused a change from {peer}: {reason}"),
                        }
                        w.write_all(&sealer.seal(&Message::Answer { id, refusal })).await?;
                    }
                    Message::Cancel { id } => {
                        if shared.scheduled.cancel(id) {
                            info!("cluster: {peer} cancelled its change (another peer refused it)");
                        }
                    }
                    _ => {
                        stats.rejected(Reject::Malformed);
                        bail!("unexpected message from the client");
                    }
                }
            }
        }
    }
}

/// The admin state, every fresh entry, then `SyncDone`.
async fn send_sync(
    shared: &Shared,
    w: &mut OwnedWriteHalf,
    sealer: &mut Sealer,
    stats: &PeerStats,
) -> anyhow::Result<()> {
    let admin = Arc::clone(&shared.admin);
    let state = tokio::task::spawn_blocking(move || admin.state()).await?;
    for message in admin_state_messages(&state) {
        w.write_all(&sealer.seal(&message)).await?;
    }
    let table = Arc::clone(&shared.table);
    let directory = shared.directory.borrow().clone();
    let entries = tokio::task::spawn_blocking(move || {
        table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fresh(&directory, 1.0)
    })
    .await??;
    for chunk in entries.chunks(MAX_ENTRIES) {
        w.write_all(&sealer.seal(&Message::Entries(chunk.to_vec())))
            .await?;
        stats.sent(chunk.len());
    }
    w.write_all(&sealer.seal(&Message::SyncDone {
        entries: entries.len() as u64,
    }))
    .await?;
    Ok(())
}

/// Takes a client link's outbox away with the link.
struct CloseOutbox<'a>(&'a Outboxes, SocketAddr);

impl Drop for CloseOutbox<'_> {
    fn drop(&mut self) {
        self.0.close(self.1);
    }
}

/// Ends the reader task with its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
