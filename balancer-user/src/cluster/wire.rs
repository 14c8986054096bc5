//! The cluster's wire format: frames, their MAC, and the messages. Pure
//! code over byte buffers; `link` does the I/O.
//!
//! A frame is a 4-byte big-endian length, then that many bytes (at most
//! [`MAX_FRAME`]): version, message type, sequence number (u64), the
//! message's payload, and an HMAC-SHA256 over the sender's side (client or
//! server) and everything before the MAC. The handshake's two frames are
//! MACed with the shared key; every later frame with the session key both
//! sides derive from the two random nonces, and carries the next sequence
//! number of its direction (1, 2, ...). So a frame recorded from one
//! connection fails the MAC on any other (another session key), a frame
//! replayed, dropped or reordered within its connection fails the sequence
//! check, and a frame reflected back to its sender fails the MAC (the side
//! is part of it).
//!
//! Backend names (the engine.io sid prefixes) came after version 1 and
//! kept it: a message without a name is encoded as version 1 encoded it,
//! and one with a name uses codes a version-1 peer refuses as malformed
//! (an add with a name is op 6, a named backend in an admin state has
//! flag bit 1), so an older peer drops and counts what it cannot keep
//! rather than apply it without the name, and a mixed cluster keeps
//! working for everything else during an upgrade.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::admin::{AdminBackend, AdminService, Change, MAX_REASON, Op, Proposal};
use crate::config::valid_name;

type HmacSha256 = Hmac<Sha256>;

pub const VERSION: u8 = 1;
/// The largest frame body (after the length): a full batch of entries is
/// about 59 KB.
pub const MAX_FRAME: usize = 64 * 1024;
pub const NONCE_LEN: usize = 16;
pub const MAC_LEN: usize = 32;
/// Version, type, sequence number.
const HEADER_LEN: usize = 1 + 1 + 8;
/// One entry on the wire (see [`Entry`]).
pub const ENTRY_LEN: usize = 59;
/// Entries in one `Entries` frame at most.
pub const MAX_ENTRIES: usize = 1000;
const _: () = assert!(4 + HEADER_LEN + 2 + MAX_ENTRIES * ENTRY_LEN + MAC_LEN <= MAX_FRAME);

/// Which end of the connection sent a frame: the one that connected
/// (client) or the one that accepted (server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Server = 1,
}

/// An affinity entry as gateways exchange it: by names every gateway
/// shares (the VIP, the backend's address), never by local ids, and with
/// an age rather than a time (the gateways' clocks differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub vip: SocketAddr,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// The client's address, masked to the service's source prefix.
    pub client: IpAddr,
    pub backend: SocketAddr,
    /// How long ago the entry was last refreshed, in ms.
    pub age_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server, first: the client's nonce.
    Hello { nonce: [u8; NONCE_LEN] },
    /// Server → client, second: the client's nonce echoed and the server's.
    HelloAck {
        client_nonce: [u8; NONCE_LEN],
        server_nonce: [u8; NONCE_LEN],
    },
    /// New or re-announced entries, or a sync's answer.
    Entries(Vec<Entry>),
    /// Client → server: send every fresh entry, then `SyncDone`.
    SyncRequest,
    /// Server → client: the sync is complete, `entries` were sent.
    SyncDone { entries: u64 },
    /// Client → server, every second: the client's clock in ms.
    Ping { t_ms: u64 },
    /// Server → client: the ping's time echoed.
    Pong { t_ms: u64 },
    /// Client → server: a backend change to check now and apply at its
    /// instant ([`super::admin`]).
    Propose(Proposal),
    /// Server → client: the proposal's answer, the one-line reason if
    /// refused.
    Answer { id: u64, refusal: Option<String> },
    /// Client → server: do not apply proposal `id` (another peer refused).
    Cancel { id: u64 },
    /// Server → client, first in a sync: its admin state, in as many
    /// frames as it takes (`more` on all but the last; a service may
    /// continue in the next frame).
    AdminState {
        version: u64,
        more: bool,
        services: Vec<AdminService>,
    },
}

const HELLO: u8 = 1;
const HELLO_ACK: u8 = 2;
const ENTRIES: u8 = 3;
const SYNC_REQUEST: u8 = 4;
const SYNC_DONE: u8 = 5;
const PING: u8 = 6;
const PONG: u8 = 7;
const PROPOSE: u8 = 8;
const ANSWER: u8 = 9;
const CANCEL: u8 = 10;
const ADMIN_STATE: u8 = 11;

/// Backends in one `AdminState` frame at most: 24 bytes each unnamed.
pub const MAX_ADMIN_BACKENDS: usize = 1500;
/// Services in one `AdminState` frame at most.
pub const MAX_ADMIN_SERVICES: usize = 256;
/// Address and port (19), weight (4), flags (1); a name adds its length
/// byte and its bytes.
const ADMIN_BACKEND_LEN: usize = 19 + 4 + 1;
/// The bytes of backends one `AdminState` frame holds at most, with room
/// for every service's name: 1500 unnamed backends, fewer named ones.
const MAX_ADMIN_BACKEND_BYTES: usize = MAX_ADMIN_BACKENDS * ADMIN_BACKEND_LEN;
const _: () = assert!(
    4 + HEADER_LEN
        + 8
        + 1
        + 2
        + MAX_ADMIN_SERVICES * (1 + 64 + 2)
        + MAX_ADMIN_BACKEND_BYTES
        + MAC_LEN
        <= MAX_FRAME
);
/// Admin state backend flags.
const ADMIN_DRAINING: u8 = 1;
const ADMIN_NAMED: u8 = 2;
/// Propose op codes.
const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_DRAIN: u8 = 3;
const OP_UNDRAIN: u8 = 4;
const OP_SET_WEIGHT: u8 = 5;
/// An add with a name, which follows the service's name.
const OP_ADD_NAMED: u8 = 6;

/// Why a received frame (or connection) was refused: the `reason` label
/// of `balancer_cluster_messages_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("frame longer than {MAX_FRAME} bytes")]
    TooLarge,
    #[error("malformed frame")]
    Malformed,
    #[error("bad MAC (wrong key, or altered)")]
    BadMac,
    #[error("sequence number out of order (replayed or dropped frame)")]
    Replay,
    #[error("names a service this gateway does not have")]
    UnknownService,
    #[error("names a backend this gateway does not have")]
    UnknownBackend,
    #[error("connection from an address that is not a configured peer")]
    UnknownPeer,
}

impl Reject {
    pub const ALL: [Reject; 7] = [
        Reject::TooLarge,
        Reject::Malformed,
        Reject::BadMac,
        Reject::Replay,
        Reject::UnknownService,
        Reject::UnknownBackend,
        Reject::UnknownPeer,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Malformed => "malformed",
            Reject::BadMac => "bad_mac",
            Reject::Replay => "replay",
            Reject::UnknownService => "unknown_service",
            Reject::UnknownBackend => "unknown_backend",
            Reject::UnknownPeer => "unknown_peer",
        }
    }

    /// Its index in [`Reject::ALL`].
    pub fn index(self) -> usize {
        Reject::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

/// The body length a frame's 4-byte prefix announces, if acceptable.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, Reject> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(Reject::TooLarge);
    }
    if len < HEADER_LEN + MAC_LEN {
        return Err(Reject::Malformed);
    }
    Ok(len)
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The session key of a connection: the shared key over both nonces.
pub fn session_key(secret: &[u8], client: &[u8; NONCE_LEN], server: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut m = mac(secret);
    m.update(b"balancer cluster session v1");
    m.update(client);
    m.update(server);
    m.finalize().into_bytes().to_vec()
}

/// One direction's sending end: its key and next sequence number.
pub struct Sealer {
    key: Vec<u8>,
    side: Side,
    seq: u64,
}

impl Sealer {
    /// For the handshake frame (`seq` 0, the shared key).
    pub fn handshake(secret: &[u8], side: Side) -> Self {
        Sealer {
            key: secret.to_vec(),
            side,
            seq: 0,
        }
    }

    /// For the session after the handshake.
    pub fn session(key: Vec<u8>, side: Side) -> Self {
        Sealer { key, side, seq: 1 }
    }

    /// `message` as a whole frame, length prefix included.
    pub fn seal(&mut self, message: &Message) -> Vec<u8> {
        let mut frame = vec![0; 4];
        frame.push(VERSION);
        frame.push(kind(message));
        frame.extend_from_slice(&self.seq.to_be_bytes());
        encode_payload(message, &mut frame);
        let mut m = mac(&self.key);
        m.update(&[self.side as u8]);
        m.update(&frame[4..]);
        frame.extend_from_slice(&m.finalize().into_bytes());
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.seq += 1;
        frame
    }
}

/// One direction's receiving end.
pub struct Opener {
    key: Vec<u8>,
    /// The sender's side.
    side: Side,
    seq: u64,
}

impl Opener {
    pub fn handshake(secret: &[u8], sender: Side) -> Self {
        Opener {
            key: secret.to_vec(),
            side: sender,
            seq: 0,
        }
    }

    pub fn session(key: Vec<u8>, sender: Side) -> Self {
        Opener {
            key,
            side: sender,
            seq: 1,
        }
    }

    /// A frame body (after its length prefix): authenticated first, then
    /// checked for its sequence number, then decoded.
    pub fn open(&mut self, body: &[u8]) -> Result<Message, Reject> {
        if body.len() > MAX_FRAME {
            return Err(Reject::TooLarge);
        }
        if body.len() < HEADER_LEN + MAC_LEN {
            return Err(Reject::Malformed);
        }
        let (signed, tag) = body.split_at(body.len() - MAC_LEN);
        let mut m = mac(&self.key);
        m.update(&[self.side as u8]);
        m.update(signed);
        m.verify_slice(tag).map_err(|_| Reject::BadMac)?;
        if signed[0] != VERSION {
            return Err(Reject::Malformed);
        }
        let seq = u64::from_be_bytes(signed[2..10].try_into().expect("8 bytes"));
        if seq != self.seq {
            return Err(Reject::Replay);
        }
        let message = decode_payload(signed[1], &signed[HEADER_LEN..])?;
        self.seq += 1;
        Ok(message)
    }
}

fn kind(message: &Message) -> u8 {
    match message {
        Message::Hello { .. } => HELLO,
        Message::HelloAck { .. } => HELLO_ACK,
        Message::Entries(_) => ENTRIES,
        Message::SyncRequest => SYNC_REQUEST,
        Message::SyncDone { .. } => SYNC_DONE,
        Message::Ping { .. } => PING,
        Message::Pong { .. } => PONG,
        Message::Propose(_) => PROPOSE,
        Message::Answer { .. } => ANSWER,
        Message::Cancel { .. } => CANCEL,
        Message::AdminState { .. } => ADMIN_STATE,
    }
}

fn encode_payload(message: &Message, out: &mut Vec<u8>) {
    match message {
        Message::Hello { nonce } => out.extend_from_slice(nonce),
        Message::HelloAck {
            client_nonce,
            server_nonce,
        } => {
            out.extend_from_slice(client_nonce);
            out.extend_from_slice(server_nonce);
        }
        Message::Entries(entries) => {
            assert!(
                entries.len() <= MAX_ENTRIES,
                "batches are cut to MAX_ENTRIES"
            );
            out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
            for e in entries {
                encode_entry(e, out);
            }
        }
        Message::SyncRequest => {}
        Message::SyncDone { entries: n } => out.extend_from_slice(&n.to_be_bytes()),
        Message::Ping { t_ms } | Message::Pong { t_ms } => {
            out.extend_from_slice(&t_ms.to_be_bytes())
        }
        Message::Propose(p) => {
            out.extend_from_slice(&p.id.to_be_bytes());
            out.extend_from_slice(&p.version.to_be_bytes());
            out.extend_from_slice(&p.apply_at_ms.to_be_bytes());
            let (op, weight) = match p.change.op {
                Op::Add { weight, name: None } => (OP_ADD, weight),
                Op::Add {
                    weight,
                    name: Some(_),
                } => (OP_ADD_NAMED, weight),
                Op::Remove => (OP_REMOVE, 0),
                Op::Drain => (OP_DRAIN, 0),
                Op::Undrain => (OP_UNDRAIN, 0),
                Op::SetWeight { weight } => (OP_SET_WEIGHT, weight),
            };
            out.push(op);
            out.extend_from_slice(&weight.to_be_bytes());
            encode_socket(p.change.backend, out);
            encode_name(&p.change.service, out);
            if let Op::Add {
                name: Some(name), ..
            } = &p.change.op
            {
                encode_name(name, out);
            }
        }
        Message::Answer { id, refusal } => {
            out.extend_from_slice(&id.to_be_bytes());
            if let Some(reason) = refusal {
                let mut cut = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..cut]);
            }
        }
        Message::Cancel { id } => out.extend_from_slice(&id.to_be_bytes()),
        Message::AdminState {
            version,
            more,
            services,
        } => {
            assert!(
                services.len() <= MAX_ADMIN_SERVICES
                    && services.iter().map(|s| s.backends.len()).sum::<usize>()
                        <= MAX_ADMIN_BACKENDS,
                "admin states are cut to MAX_ADMIN_BACKENDS"
            );
            out.extend_from_slice(&version.to_be_bytes());
            out.push(u8::from(*more));
            out.extend_from_slice(&(services.len() as u16).to_be_bytes());
            for s in services {
                encode_name(&s.name, out);
                out.extend_from_slice(&(s.backends.len() as u16).to_be_bytes());
                for b in &s.backends {
                    encode_socket(b.address, out);
                    out.extend_from_slice(&b.weight.to_be_bytes());
                    let draining = if b.draining { ADMIN_DRAINING } else { 0 };
                    let named = if b.name.is_some() { ADMIN_NAMED } else { 0 };
                    out.push(draining | named);
                    if let Some(name) = &b.name {
                        encode_name(name, out);
                    }
                }
            }
        }
    }
}

/// A service's or a backend's name: its length (one byte, 1..=64) and
/// its bytes.
fn encode_name(name: &str, out: &mut Vec<u8>) {
    let bytes = &name.as_bytes()[..name.len().min(64)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Address (17, see [`encode_ip`]) and port (2).
fn encode_socket(a: SocketAddr, out: &mut Vec<u8>) {
    encode_ip(a.ip(), out);
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Reads a payload front to back; any shortfall is `Malformed`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        if self.0.len() < n {
            return Err(Reject::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Reject> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Reject> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, Reject> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, Reject> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn socket(&mut self) -> Result<SocketAddr, Reject> {
        let family = self.u8()?;
        let ip = decode_ip(family, self.take(16)?)?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    fn name(&mut self) -> Result<String, Reject> {
        let len = usize::from(self.u8()?);
        if !(1..=64).contains(&len) {
            return Err(Reject::Malformed);
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| Reject::Malformed)
    }

    /// A backend's name: one a config could hold, else `Malformed`.
    fn backend_name(&mut self) -> Result<String, Reject> {
        let name = self.name()?;
        if !valid_name(&name) {
            return Err(Reject::Malformed);
        }
        Ok(name)
    }

    fn end(&self) -> Result<(), Reject> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Reject::Malformed)
        }
    }
}

fn decode_propose(p: &[u8]) -> Result<Message, Reject> {
    let mut r = Reader(p);
    let (id, version, apply_at_ms) = (r.u64()?, r.u64()?, r.u64()?);
    let (op, weight) = (r.u8()?, r.u32()?);
    let backend = r.socket()?;
    let service = r.name()?;
    let op = match (op, weight) {
        (OP_ADD, w) => Op::Add {
            weight: w,
            name: None,
        },
        (OP_ADD_NAMED, w) => Op::Add {
            weight: w,
            name: Some(r.backend_name()?),
        },
        (OP_REMOVE, 0) => Op::Remove,
        (OP_DRAIN, 0) => Op::Drain,
        (OP_UNDRAIN, 0) => Op::Undrain,
        (OP_SET_WEIGHT, w) => Op::SetWeight { weight: w },
        _ => return Err(Reject::Malformed),
    };
    r.end()?;
    Ok(Message::Propose(Proposal {
        id,
        version,
        apply_at_ms,
        change: Change {
            service,
            backend,
            op,
        },
    }))
}

fn decode_answer(p: &[u8]) -> Result<Message, Reject> {
    let mut r = Reader(p);
    let id = r.u64()?;
    let rest = r.take(r.0.len())?;
    if rest.len() > MAX_REASON {
        return Err(Reject::Malformed);
    }
    let refusal = match rest {
        [] => None,
        text => Some(String::from_utf8(text.to_vec()).map_err(|_| Reject::Malformed)?),
    };
    Ok(Message::Answer { id, refusal })
}

fn decode_admin_state(p: &[u8]) -> Result<Message, Reject> {
    let mut r = Reader(p);
    let version = r.u64()?;
    let more = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(Reject::Malformed),
    };
    let count = usize::from(r.u16()?);
    if count > MAX_ADMIN_SERVICES {
        return Err(Reject::Malformed);
    }
    let mut services = Vec::with_capacity(count);
    let mut total = 0;
    for _ in 0..count {
        let name = r.name()?;
        let n = usize::from(r.u16()?);
        total += n;
        if total > MAX_ADMIN_BACKENDS {
            return Err(Reject::Malformed);
        }
        let mut backends = Vec::with_capacity(n);
        for _ in 0..n {
            let address = r.socket()?;
            let weight = r.u32()?;
            let flags = r.u8()?;
            if flags & !(ADMIN_DRAINING | ADMIN_NAMED) != 0 {
                return Err(Reject::Malformed);
            }
            let name = if flags & ADMIN_NAMED != 0 {
                Some(r.backend_name()?)
            } else {
                None
            };
            backends.push(AdminBackend {
                address,
                weight,
                draining: flags & ADMIN_DRAINING != 0,
                name,
            });
        }
        services.push(AdminService { name, backends });
    }
    r.end()?;
    Ok(Message::AdminState {
        version,
        more,
        services,
    })
}

/// `state` as `AdminState` messages that each fit a frame: a frame is cut
/// at [`MAX_ADMIN_SERVICES`] services, [`MAX_ADMIN_BACKENDS`] backends or
/// their bytes, and a service cut goes on in the next one.
pub fn admin_state_messages(state: &super::admin::AdminState) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut services: Vec<AdminService> = Vec::new();
    let (mut backends, mut bytes) = (0, 0);
    let mut flush = |services: &mut Vec<AdminService>| {
        messages.push(Message::AdminState {
            version: state.version,
            more: true,
            services: std::mem::take(services),
        });
    };
    for s in &state.services {
        if services.len() == MAX_ADMIN_SERVICES {
            flush(&mut services);
            (backends, bytes) = (0, 0);
        }
        services.push(AdminService {
            name: s.name.clone(),
            backends: Vec::new(),
        });
        for b in &s.backends {
            let len = ADMIN_BACKEND_LEN + b.name.as_ref().map_or(0, |n| 1 + n.len());
            if backends == MAX_ADMIN_BACKENDS || bytes + len > MAX_ADMIN_BACKEND_BYTES {
                flush(&mut services);
                (backends, bytes) = (0, 0);
                services.push(AdminService {
                    name: s.name.clone(),
                    backends: Vec::new(),
                });
            }
            services
                .last_mut()
                .expect("pushed above")
                .backends
                .push(b.clone());
            backends += 1;
            bytes += len;
        }
    }
    flush(&mut services);
    if let Some(Message::AdminState { more, .. }) = messages.last_mut() {
        *more = false;
    }
    messages
}

fn decode_payload(kind: u8, p: &[u8]) -> Result<Message, Reject> {
    let nonce = |b: &[u8]| -> [u8; NONCE_LEN] { b.try_into().expect("sized") };
    let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("sized"));
    Ok(match (kind, p.len()) {
        (HELLO, NONCE_LEN) => Message::Hello { nonce: nonce(p) },
        (HELLO_ACK, 32) => Message::HelloAck {
            client_nonce: nonce(&p[..NONCE_LEN]),
            server_nonce: nonce(&p[NONCE_LEN..]),
        },
        (ENTRIES, n) if n >= 2 => {
            let count = usize::from(u16::from_be_bytes([p[0], p[1]]));
            let body = &p[2..];
            if count > MAX_ENTRIES || body.len() != count * ENTRY_LEN {
                return Err(Reject::Malformed);
            }
            Message::Entries(
                body.chunks_exact(ENTRY_LEN)
                    .map(decode_entry)
                    .collect::<Result<_, _>>()?,
            )
        }
        (SYNC_REQUEST, 0) => Message::SyncRequest,
        (SYNC_DONE, 8) => Message::SyncDone { entries: u64_of(p) },
        (PING, 8) => Message::Ping { t_ms: u64_of(p) },
        (PONG, 8) => Message::Pong { t_ms: u64_of(p) },
        (PROPOSE, _) => decode_propose(p)?,
        (ANSWER, _) => decode_answer(p)?,
        (CANCEL, 8) => Message::Cancel { id: u64_of(p) },
        (ADMIN_STATE, _) => decode_admin_state(p)?,
        _ => return Err(Reject::Malformed),
    })
}

/// Family byte (4 or 6) and 16 address bytes, an IPv4 address in the
/// first 4 and zeros after.
fn encode_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
            out.extend_from_slice(&[0; 12]);
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

fn decode_ip(family: u8, b: &[u8]) -> Result<IpAddr, Reject> {
    let b: [u8; 16] = b.try_into().map_err(|_| Reject::Malformed)?;
    match family {
        4 if b[4..].iter().all(|&x| x == 0) => Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()),
        6 => Ok(Ipv6Addr::from(b).into()),
        _ => Err(Reject::Malformed),
    }
}

/// VIP family + address (17), VIP port (2), protocol (1), client address
/// (16, the VIP's family), backend family + address (17), backend port
/// (2), age in ms (4): 59 bytes.
fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    encode_ip(e.vip.ip(), out);
    out.extend_from_slice(&e.vip.port().to_be_bytes());
    out.push(e.proto);
    let mut client = Vec::with_capacity(17);
    encode_ip(e.client, &mut client);
    out.extend_from_slice(&client[1..]);
    encode_ip(e.backend.ip(), out);
    out.extend_from_slice(&e.backend.port().to_be_bytes());
    out.extend_from_slice(&e.age_ms.to_be_bytes());
    debug_assert_eq!(out.len() - start, ENTRY_LEN);
}

fn decode_entry(b: &[u8]) -> Result<Entry, Reject> {
    let vip_ip = decode_ip(b[0], &b[1..17])?;
    let vip_port = u16::from_be_bytes([b[17], b[18]]);
    let proto = b[19];
    let client = decode_ip(b[0], &b[20..36])?;
    let backend_ip = decode_ip(b[36], &b[37..53])?;
    let backend_port = u16::from_be_bytes([b[53], b[54]]);
    let age_ms = u32::from_be_bytes([b[55], b[56], b[57], b[58]]);
    Ok(Entry {
        vip: SocketAddr::new(vip_ip, vip_port),
        proto,
        client,
        backend: SocketAddr::new(backend_ip, backend_port),
        age_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a key of more than sixteen bytes";

    fn entry(age_ms: u32) -> Entry {
        Entry {
            vip: "198.18.0.100:80".parse().unwrap(),
            proto: 6,
            client: "198.18.0.7".parse().unwrap(),
            backend: "198.18.1.12:8080".parse().unwrap(),
            age_ms,
        }
    }

    fn body(frame: &[u8]) -> &[u8] {
        let len = body_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    fn session() -> (Sealer, Opener) {
        let key = session_key(KEY, &[1; 16], &[2; 16]);
        (
            Sealer::session(key.clone(), Side::Client),
            Opener::session(key, Side::Client),
        )
    }

    #[test]
    fn every_message_round_trips() {
        let v6 = Entry {
            vip: "[2001:db8::100]:443".parse().unwrap(),
            proto: 17,
            client: "2001:db8::".parse().unwrap(),
            backend: "198.18.1.11:53".parse().unwrap(),
            age_ms: u32::MAX,
        };
        let messages = [
            Message::Entries(vec![entry(5), v6]),
            Message::Entries(vec![entry(1); MAX_ENTRIES]),
            Message::Entries(vec![]),
            Message::SyncRequest,
            Message::SyncDone { entries: 42 },
            Message::Ping { t_ms: 7 },
            Message::Pong { t_ms: 8 },
            Message::Propose(Proposal {
                id: 1,
                version: 2,
                apply_at_ms: 3,
                change: Change {
                    service: "web".into(),
                    backend: "[2001:db8::11]:3000".parse().unwrap(),
                    op: Op::SetWeight { weight: 9 },
                },
            }),
            Message::Propose(Proposal {
                id: 4,
                version: 5,
                apply_at_ms: 6,
                change: Change {
                    service: "chat".into(),
                    backend: "198.18.1.14:3000".parse().unwrap(),
                    op: Op::Add {
                        weight: 2,
                        name: Some("b4".into()),
                    },
                },
            }),
            Message::AdminState {
                version: 3,
                more: false,
                services: vec![AdminService {
                    name: "chat".into(),
                    backends: vec![
                        AdminBackend {
                            address: "198.18.1.14:3000".parse().unwrap(),
                            weight: 2,
                            draining: true,
                            name: Some("b4".into()),
                        },
                        AdminBackend {
                            address: "198.18.1.15:3000".parse().unwrap(),
                            weight: 1,
                            draining: false,
                            name: None,
                        },
                    ],
                }],
            },
            Message::Answer {
                id: 1,
                refusal: None,
            },
            Message::Answer {
                id: 1,
                refusal: Some("service \"web\" has no backend 198.18.1.14:3000".into()),
            },
            Message::Cancel { id: 1 },
        ];
        let (mut sealer, mut opener) = session();
        for m in &messages {
            let frame = sealer.seal(m);
            assert!(frame.len() - 4 <= MAX_FRAME);
            assert_eq!(opener.open(body(&frame)).as_ref(), Ok(m));
        }
        let mut hello = Sealer::handshake(KEY, Side::Server);
        let ack = Message::HelloAck {
            client_nonce: [3; 16],
            server_nonce: [4; 16],
        };
        let frame = hello.seal(&ack);
        assert_eq!(
            Opener::handshake(KEY, Side::Server).open(body(&frame)),
            Ok(ack)
        );
    }

    #[test]
    fn an_entry_is_59_bytes_on_the_wire() {
        let (mut sealer, _) = session();
        let one = sealer.seal(&Message::Entries(vec![entry(1)])).len();
        let two = sealer.seal(&Message::Entries(vec![entry(1); 2])).len();
        assert_eq!(two - one, ENTRY_LEN);
        assert_eq!(one, 4 + HEADER_LEN + 2 + ENTRY_LEN + MAC_LEN);
    }

    #[test]
    fn a_wrong_key_or_a_flipped_bit_fails_the_mac() {
        let mut sealer = Sealer::handshake(b"another key, also long enough", Side::Client);
        let frame = sealer.seal(&Message::Hello { nonce: [9; 16] });
        assert_eq!(
            Opener::handshake(KEY, Side::Client).open(body(&frame)),
            Err(Reject::BadMac)
        );
        let (mut sealer, _) = session();
        let frame = sealer.seal(&Message::Entries(vec![entry(3)]));
        for i in 0..frame.len() - 4 {
            let mut altered = frame[4..].to_vec();
            altered[i] ^= 0x10;
            let (_, mut opener) = session();
            assert_eq!(opener.open(&altered), Err(Reject::BadMac), "byte {i}");
        }
    }

    #[test]
    fn a_reflected_frame_fails_the_mac() {
        let key = session_key(KEY, &[1; 16], &[2; 16]);
        let frame = Sealer::session(key.clone(), Side::Client).seal(&Message::SyncRequest);
        let mut server_side = Opener::session(key, Side::Server);
        assert_eq!(server_side.open(body(&frame)), Err(Reject::BadMac));
    }

    #[test]
    fn a_replayed_or_skipped_frame_is_refused() {
        let (mut sealer, mut opener) = session();
        let first = sealer.seal(&Message::Ping { t_ms: 1 });
        assert!(opener.open(body(&first)).is_ok());
        assert_eq!(opener.open(body(&first)), Err(Reject::Replay));
        let _lost = sealer.seal(&Message::Ping { t_ms: 2 });
        let third = sealer.seal(&Message::Ping { t_ms: 3 });
        assert_eq!(opener.open(body(&third)), Err(Reject::Replay));
    }

    #[test]
    fn another_sessions_frame_fails_the_mac() {
        let old = session_key(KEY, &[1; 16], &[2; 16]);
        let new = session_key(KEY, &[1; 16], &[5; 16]);
        let frame = Sealer::session(old, Side::Client).seal(&Message::SyncRequest);
        assert_eq!(
            Opener::session(new, Side::Client).open(body(&frame)),
            Err(Reject::BadMac)
        );
    }

    #[test]
    fn lengths_are_bounded() {
        assert_eq!(body_len(u32::MAX.to_be_bytes()), Err(Reject::TooLarge));
        assert_eq!(
            body_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(Reject::TooLarge)
        );
        assert_eq!(body_len(*b"GET "), Err(Reject::TooLarge));
        assert_eq!(body_len(3u32.to_be_bytes()), Err(Reject::Malformed));
        assert_eq!(body_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
    }

    /// Authentic frames whose contents are wrong: still refused, by a
    /// sender that has the key (a buggy peer).
    #[test]
    fn authentic_but_malformed_payloads_are_refused() {
        let key = session_key(KEY, &[1; 16], &[2; 16]);
        let signed = |kind: u8, payload: &[u8]| {
            let mut b = vec![VERSION, kind];
            b.extend_from_slice(&1u64.to_be_bytes());
            b.extend_from_slice(payload);
            let mut m = mac(&key);
            m.update(&[Side::Client as u8]);
            m.update(&b);
            b.extend_from_slice(&m.finalize().into_bytes());
            b
        };
        let mut good = Vec::new();
        encode_entry(&entry(1), &mut good);
        let mut bad_family = good.clone();
        bad_family[0] = 5;
        let mut v4_with_junk = good.clone();
        v4_with_junk[10] = 1;
        let cases: Vec<(u8, Vec<u8>)> = vec![
            (99, vec![]),
            (SYNC_REQUEST, vec![0]),
            (PING, vec![0; 7]),
            (ENTRIES, vec![0]),
            (ENTRIES, [&[0u8, 2][..], &good].concat()),
            (ENTRIES, [&[0u8, 1][..], &good, &[0]].concat()),
            (ENTRIES, [&[0u8, 1][..], &bad_family].concat()),
            (ENTRIES, [&[0u8, 1][..], &v4_with_junk].concat()),
            (CANCEL, vec![0; 9]),
            (PROPOSE, vec![0; 24]),
            (ANSWER, [&[0u8; 8][..], &[0xff]].concat()),
            (ADMIN_STATE, [&[0u8; 8][..], &[2, 0, 0]].concat()),
            (ADMIN_STATE, [&[0u8; 8][..], &[0, 0, 1, 0, 0, 0]].concat()),
        ];
        for (kind, payload) in cases {
            let mut opener = Opener::session(key.clone(), Side::Client);
            assert_eq!(
                opener.open(&signed(kind, &payload)),
                Err(Reject::Malformed),
                "type {kind}, {payload:?}"
            );
        }
        let mut opener = Opener::session(key.clone(), Side::Client);
        assert_eq!(
            opener.open(&signed(ENTRIES, &[&[0u8, 1][..], &good].concat())),
            Ok(Message::Entries(vec![entry(1)]))
        );
    }

    #[test]
    fn a_large_admin_state_is_cut_into_frames_and_read_back_whole() {
        let backend = |i: u32| AdminBackend {
            address: SocketAddr::new(Ipv4Addr::from(0xc612_0000 + i).into(), 3000),
            weight: i % 7 + 1,
            draining: i.is_multiple_of(3),
            name: None,
        };
        let state = super::super::admin::AdminState {
            version: 42,
            services: vec![
                AdminService {
                    name: "a".repeat(64),
                    backends: (0..4000).map(backend).collect(),
                },
                AdminService {
                    name: "web".into(),
                    backends: (0..3).map(backend).collect(),
                },
            ],
        };
        let messages = admin_state_messages(&state);
        assert_eq!(messages.len(), 3);
        let (mut sealer, mut opener) = session();
        let mut read = super::super::admin::AdminState::default();
        for (i, m) in messages.iter().enumerate() {
            let frame = sealer.seal(m);
            assert!(frame.len() - 4 <= MAX_FRAME);
            let Ok(Message::AdminState {
                version,
                more,
                services,
            }) = opener.open(body(&frame))
            else {
                panic!("an admin state")
            };
            assert_eq!((version, more), (42, i < 2));
            read.version = version;
            read.extend(services);
        }
        assert_eq!(read, state);
        let empty = admin_state_messages(&Default::default());
        assert_eq!(
            empty,
            vec![Message::AdminState {
                version: 0,
                more: false,
                services: vec![]
            }]
        );
    }

    /// A proposal to add 198.18.1.14:3000 to "web" (id 1, version 2, at 3
    /// ms).
    fn propose_add(weight: u32, name: Option<&str>) -> Message {
        Message::Propose(Proposal {
            id: 1,
            version: 2,
            apply_at_ms: 3,
            change: Change {
                service: "web".into(),
                backend: "198.18.1.14:3000".parse().unwrap(),
                op: Op::Add {
                    weight,
                    name: name.map(Into::into),
                },
            },
        })
    }

    /// Without a name, an add and an admin state are the bytes version 1
    /// sent, so a version-1 peer reads them; with one, it refuses them.
    #[test]
    fn unnamed_backends_are_encoded_as_version_1_encoded_them() {
        let add = |name: Option<&str>| {
            let mut out = Vec::new();
            encode_payload(&propose_add(9, name), &mut out);
            out
        };
        let mut v1 = [&[0, 0, 0, 0, 0, 0, 0, 1][..], &[0, 0, 0, 0, 0, 0, 0, 2]].concat();
        v1.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 0, 9, 4, 198, 18, 1, 14]);
        v1.extend_from_slice(&[0; 12]);
        v1.extend_from_slice(&[0x0b, 0xb8, 3, b'w', b'e', b'b']);
        assert_eq!(add(None), v1);
        let named = add(Some("b4"));
        assert_eq!(named[24], OP_ADD_NAMED);
        assert_eq!(&named[named.len() - 3..], &[2, b'b', b'4']);
    }

    /// Authentic frames naming a backend with a name no config could
    /// hold, or with unknown flags: refused, never applied.
    #[test]
    fn a_malformed_backend_name_is_refused() {
        let key = session_key(KEY, &[1; 16], &[2; 16]);
        let seal = |m: &Message| Sealer::session(key.clone(), Side::Client).seal(m);
        let open = |frame: &[u8]| Opener::session(key.clone(), Side::Client).open(&frame[4..]);
        let propose = |name: &str| propose_add(1, Some(name));
        let state = |name: &str| Message::AdminState {
            version: 1,
            more: false,
            services: vec![AdminService {
                name: "web".into(),
                backends: vec![AdminBackend {
                    address: "198.18.1.14:3000".parse().unwrap(),
                    weight: 1,
                    draining: false,
                    name: Some(name.into()),
                }],
            }],
        };
        for bad in ["b 4", "b/4", "b\n4", "é"] {
            assert_eq!(
                open(&seal(&propose(bad))),
                Err(Reject::Malformed),
                "{bad:?}"
            );
            assert_eq!(open(&seal(&state(bad))), Err(Reject::Malformed), "{bad:?}");
        }
        assert!(open(&seal(&propose("b4"))).is_ok());
        let mut flags = seal(&state("b4"));
        // The flags byte: after the frame header, version, more, count,
        // service name, backend count, address and weight.
        let at = 4 + HEADER_LEN + 8 + 1 + 2 + 4 + 2 + 19 + 4;
        assert_eq!(flags[at], ADMIN_NAMED);
        flags[at] |= 4;
        let body = &flags[4..flags.len() - MAC_LEN];
        let mut m = mac(&key);
        m.update(&[Side::Client as u8]);
        m.update(body);
        let tag = m.finalize().into_bytes();
        let n = flags.len();
        flags[n - MAC_LEN..].copy_from_slice(&tag);
        assert_eq!(open(&flags), Err(Reject::Malformed));
    }

    #[test]
    fn named_backends_cut_admin_state_frames_by_their_bytes() {
        let state = super::super::admin::AdminState {
            version: 7,
            services: vec![AdminService {
                name: "web".into(),
                backends: (0..1500u32)
                    .map(|i| AdminBackend {
                        address: SocketAddr::new(Ipv4Addr::from(0xc612_0000 + i).into(), 3000),
                        weight: 1,
                        draining: false,
                        name: Some(format!("{i:0>64}")),
                    })
                    .collect(),
            }],
        };
        let messages = admin_state_messages(&state);
        assert!(
            messages.len() > 1,
            "1500 named backends do not fit one frame"
        );
        let (mut sealer, mut opener) = session();
        let mut read = super::super::admin::AdminState::default();
        for m in &messages {
            let frame = sealer.seal(m);
            assert!(frame.len() - 4 <= MAX_FRAME);
            let Ok(Message::AdminState {
                version, services, ..
            }) = opener.open(body(&frame))
            else {
                panic!("an admin state")
            };
            read.version = version;
            read.extend(services);
        }
        assert_eq!(read, state);
    }

    #[test]
    fn reject_labels_are_unique() {
        for (i, a) in Reject::ALL.iter().enumerate() {
            assert_eq!(a.index(), i);
            for b in &Reject::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }
}
