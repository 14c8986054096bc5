// Drives Socket.IO client sessions from chosen source addresses and reports
// every session error, as JSON lines on stdout:
//
//   node driver.js CONFIG.json
//
// CONFIG: { url, sessions: [{ address, polling, addresses? }], duration_ms, interval_ms,
//           ack_timeout_ms, reconnection_delay_ms, ready_timeout_ms,
//           final_message, finish_on_stdin }
//
// interval_ms 0 sends no periodic messages (idle sessions: only Socket.IO's
// heartbeats cross the wire). final_message: at the end every session that
// ever connected sends one acknowledged message and waits for the answer
// (or ack_timeout_ms) before closing; its report says `final_acked`.
// finish_on_stdin: a `finish` line on stdin ends the run early (the run
// still ends duration_ms after `ready` at the latest).
//
// Each session binds its own source address (an http.Agent with
// `localAddress` for the long-polling requests and the WebSocket alike) and
// opens a new TCP connection per HTTP request (no keep-alive), so one
// session makes several connections: the case sticky sessions exist for.
// `polling: true` sessions never upgrade; the others use the default
// transports (long-polling handshake, then the WebSocket upgrade).
//
// A session with `addresses` (more local addresses) binds each new
// connection to the next of [address, ...addresses] in turn: a client whose
// address changes between requests, as behind a pool of proxies or a mobile
// network. Without it every connection binds `address`.
//
// Each session's report lists the local port and address of every
// connection it opened (`ports`, `local_addresses`).
//
// Events: {"event":"connected",id,server}, {"event":"ready"} once every
// session has connected (or ready_timeout_ms passed), {"event":"error",id,
// kind,detail}, {"event":"reconnected",id,server,after_ms}, and at the end
// {"event":"summary",sessions:[...]}. A session error is anything a user
// would see: a failed connect (`400 Session ID unknown` is one), a
// disconnect we did not ask for, a failed upgrade, an unacknowledged
// message, or an answer from another server than the session's.
"use strict";
const fs = require("fs");
const http = require("http");
const { io } = require("socket.io-client");

const MAX_ERRORS_KEPT = 10;
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const started = Date.now();
let stopping = false;
let readySent = false;

function out(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function describe(err) {
  const parts = [String(err && err.message ? err.message : err)];
  const d = err && err.description;
  if (d !== undefined && d !== null) {
    parts.push(typeof d === "object" ? String(d.message || d.code || JSON.stringify(d)) : String(d));
  }
  if (err && err.context && err.context.status) parts.push(`status ${err.context.status}`);
  return parts.join(" ");
}

const sessions = cfg.sessions.map((spec, id) => {
  const st = {
    id,
    address: spec.address,
    polling: !!spec.polling,
    server: null,
    servers: [],
    acks: 0,
    upgraded: false,
    errors: [],
    error_count: 0,
    reconnects: [],
    connected: false,
    final_acked: false,
    // The local port of every TCP connection the session opened, so a test
    // can find each connection in another host's view (a router's ECMP
    // choice, a gateway's flows).
    ports: [],
    local_addresses: [],
    lostAt: null,
  };
  const error = (kind, detail) => {
    if (stopping) return;
    const e = { kind, detail: String(detail), at_ms: Date.now() - started, server: st.server };
    st.error_count += 1;
    // Every error is counted; the first few of each session are kept whole.
    if (st.errors.length < MAX_ERRORS_KEPT) st.errors.push(e);
    out({ event: "error", id, ...e });
  };
  st.error = error;
  const agent = new http.Agent({ localAddress: spec.address, keepAlive: false });
  const createConnection = agent.createConnection.bind(agent);
  const locals = [spec.address, ...(spec.addresses || [])];
  let next = 0;
  agent.createConnection = (options, callback) => {
    const localAddress = locals[next++ % locals.length];
    const conn = createConnection({ ...options, localAddress }, callback);
    conn.once("connect", () => {
      st.ports.push(conn.localPort);
      st.local_addresses.push(conn.localAddress);
    });
    return conn;
  };
  const socket = io(cfg.url, {
    transports: st.polling ? ["polling"] : ["polling", "websocket"],
    agent,
    localAddress: spec.address,
    forceNew: true,
    reconnection: true,
    reconnectionDelay: cfg.reconnection_delay_ms,
    reconnectionDelayMax: cfg.reconnection_delay_ms * 2,
    randomizationFactor: 0,
    timeout: 5000,
  });
  st.socket = socket;
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    engine.on("upgrade", () => (st.upgraded = true));
    engine.on("upgradeError", (e) => error("upgrade_error", describe(e)));
  });
  socket.on("connect", () => {
    socket.timeout(cfg.ack_timeout_ms).emit("hello", (err, r) => {
      if (err) return error("ack_timeout", "hello");
      if (!st.servers.includes(r.server)) st.servers.push(r.server);
      if (st.lostAt !== null) {
        const after_ms = Date.now() - st.lostAt;
        st.reconnects.push({ from: st.server, to: r.server, after_ms });
        out({ event: "reconnected", id, from: st.server, server: r.server, after_ms });
        st.lostAt = null;
      }
      st.server = r.server;
      if (!st.connected) {
        st.connected = true;
        out({ event: "connected", id, address: st.address, server: r.server });
        if (!readySent && sessions.every((s) => s.connected)) ready();
      }
    });
  });
  socket.on("connect_error", (e) => error("connect_error", describe(e)));
  socket.on("disconnect", (reason, details) => {
    if (stopping) return;
    if (st.lostAt === null) st.lostAt = Date.now();
    error("disconnect", details ? `${reason}: ${describe(details)}` : reason);
  });
  if (cfg.interval_ms > 0) st.timer = setInterval(() => {
    if (!socket.connected || stopping || st.server === null || st.lostAt !== null) return;
    const expected = st.server;
    socket.timeout(cfg.ack_timeout_ms).emit("echo", st.acks, (err, r) => {
      if (stopping) return;
      if (err) return error("ack_timeout", "echo");
      if (r.server !== expected) return error("server_changed", `${expected} -> ${r.server}`);
      st.acks += 1;
    });
  }, cfg.interval_ms);
  return st;
});

function ready() {
  readySent = true;
  out({ event: "ready", connected: sessions.filter((s) => s.connected).length, after_ms: Date.now() - started });
  setTimeout(finish, cfg.duration_ms);
}

setTimeout(() => readySent || ready(), cfg.ready_timeout_ms);

let finishing = false;

if (cfg.finish_on_stdin) {
  let input = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (d) => {
    input += d;
    if (input.includes("finish\n")) finish();
  });
}

// The final acknowledged message of a session that ever connected: a
// session that lost its server (or its TCP connection) without noticing
// finds out here.
function finalMessage(st) {
  if (st.server === null) return Promise.resolve();
  const expected = st.server;
  return new Promise((resolve) => {
    st.socket.timeout(cfg.ack_timeout_ms).emit("echo", "final", (err, r) => {
      if (err) st.error("ack_timeout", "final message");
      else if (r.server !== expected) st.error("server_changed", `${expected} -> ${r.server} (final message)`);
      else {
        st.acks += 1;
        st.final_acked = true;
      }
      resolve();
    });
  });
}

async function finish() {
  if (finishing) return;
  finishing = true;
  if (cfg.final_message) await Promise.all(sessions.map(finalMessage));
  for (const s of sessions) {
    if (!s.polling && s.connected && !s.upgraded && s.errors.length === 0) {
      s.errors.push({ kind: "no_upgrade", detail: "still long-polling at the end", at_ms: Date.now() - started, server: s.server });
      s.error_count += 1;
    }
  }
  stopping = true;
  for (const s of sessions) {
    clearInterval(s.timer);
    s.socket.close();
  }
  // Let the closes reach the servers (FIN both ways) before exiting.
  // Exit only once the summary is written: stdout to a pipe is
  // asynchronous, and exiting earlier would cut it short.
  setTimeout(() => {
    const summary = { event: "summary", sessions: sessions.map(({ socket, timer, lostAt, error, ...s }) => s) };
    process.stdout.write(JSON.stringify(summary) + "\n", () => process.exit(0));
  }, 500);
}
