// A plain Socket.IO server: no sticky adapter, no state shared with the
// other backends, so a request carrying another server's session id gets
// Socket.IO's own `400 Session ID unknown`.
//
//   node server.js NAME PORT [default-heartbeat]
//
// By default it pings every second (timeout 2 s), so a long-polling session
// makes a new request every second; `default-heartbeat` keeps Socket.IO's
// own defaults (25 s, timeout 20 s), what idle sessions see in production.
// GET /health answers 200 (the balancer's http health check). Events:
// `hello` and `echo` are acknowledged with this server's name, so a client
// sees which backend holds its session.
//
// With SID_PREFIX=1 in its environment, the server's engine.io session ids
// are `NAME.<uuid>`: what a balancer with `affinity = "sid"` routes by (the
// prefix is the backend's `name` in its config).
"use strict";
const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");

const [name, port] = [process.argv[2], Number(process.argv[3])];
const defaultHeartbeat = process.argv[4] === "default-heartbeat";
const server = http.createServer((req, res) => {
  if (req.url === "/health") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
  } else if (!req.url.startsWith("/socket.io/")) {
    res.writeHead(404);
    res.end();
  }
});
const io = new Server(server, defaultHeartbeat ? {} : { pingInterval: 1000, pingTimeout: 2000 });
if (process.env.SID_PREFIX === "1") io.engine.generateId = () => `${name}.${crypto.randomUUID()}`;
io.on("connection", (socket) => {
  socket.on("hello", (ack) => typeof ack === "function" && ack({ server: name, sid: socket.id }));
  socket.on("echo", (data, ack) => typeof ack === "function" && ack({ server: name, data }));
});
server.listen(port, "0.0.0.0", () => console.log(`ready ${name} ${port}`));
process.on("SIGTERM", () => process.exit(0));
