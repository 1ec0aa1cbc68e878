"use strict";
// The comparison peer: a Socket.IO 4 location server built the way the
// usual tutorials and seed projects build one (redis-adapter for rooms
// across processes, the session in Redis, one SET per position), speaking
// fleetgate's wire contract closely enough for fleetgate-bench to drive
// both identically. It is a yardstick, not a product: no rate limits,
// presence, rooms or chat.
//
//   PORT=3100 REDIS_URL=redis://127.0.0.1:6380 JWT_SECRET=… node server.js

const crypto = require("node:crypto");
const http = require("node:http");

const { createAdapter } = require("@socket.io/redis-adapter");
const Redis = require("ioredis");
const jwt = require("jsonwebtoken");
const { Server } = require("socket.io");

const PORT = Number(process.env.PORT || 3100);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const SECRET = process.env.JWT_SECRET || process.env.FLEETGATE_JWT_SECRET;
const SESSION_TTL = Number(process.env.SESSION_TTL_SECS || 10800);
const LOCATION_TTL = Number(process.env.LOCATION_TTL_SECS || 10800);
const MAX_BODY = 64 * 1024;
const ID = /^[A-Za-z0-9._:-]{1,64}$/;
const ROLES = new Set(["vehicle", "viewer", "dispatcher"]);

if (!SECRET) {
  console.error("set JWT_SECRET (or FLEETGATE_JWT_SECRET) to the HS256 secret");
  process.exit(2);
}

const redis = new Redis(REDIS_URL);
const pubClient = redis.duplicate();
const subClient = redis.duplicate();

class Refusal extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const ok = (data) => ({ ok: true, data });
const fail = (code, message) => ({ ok: false, error: { code, message } });

function verify(token) {
  if (typeof token !== "string" || token.length === 0 || token.length > 8192) {
    throw new Refusal("invalid_token", "no token");
  }
  let claims;
  try {
    claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
  } catch (e) {
    throw new Refusal(e.name === "TokenExpiredError" ? "token_expired" : "invalid_token", e.message);
  }
  const { sub, fleet, role } = claims;
  if (typeof sub !== "string" || !ID.test(fleet || "") || !ROLES.has(role) || typeof claims.exp !== "number") {
    throw new Refusal("invalid_token", "missing or malformed claims");
  }
  return claims;
}

async function openSession(claims) {
  const now = Date.now();
  const ttl = Math.max(1, Math.min(SESSION_TTL, claims.exp - Math.floor(now / 1000)));
  const session = {
    sessionId: crypto.randomBytes(16).toString("hex"),
    sub: claims.sub,
    fleet: claims.fleet,
    role: claims.role,
    ...(claims.role === "vehicle" ? { vehicle: claims.vehicle || claims.sub } : {}),
    expiresAt: now + ttl * 1000,
  };
  await redis.set(`session:${session.sessionId}`, JSON.stringify(session), "EX", ttl);
  return session;
}

const num = (v, name, lo, hi) => {
  if (typeof v !== "number" || !Number.isFinite(v) || v < lo || (hi !== undefined && v > hi)) {
    throw new Refusal("invalid_payload", `${name}: out of range`);
  }
  return v;
};

// Section 5.1 of the contract, minus the bus-app and GeoJSON forms.
function parsePosition(session, body, vehicleFromPath) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new Refusal("invalid_payload", "payload: must be an object");
  }
  let vehicleId = vehicleFromPath || body.vehicleId || body.busId;
  if (session.role === "viewer") throw new Refusal("forbidden", "viewers cannot publish positions");
  if (session.role === "vehicle") {
    if (vehicleId !== undefined && vehicleId !== session.vehicle) {
      throw new Refusal("forbidden", "a vehicle token publishes only its own vehicle");
    }
    vehicleId = session.vehicle;
  }
  if (typeof vehicleId !== "string" || !ID.test(vehicleId)) throw new Refusal("invalid_payload", "vehicleId");
  const lat = num(body.lat, "lat", -90, 90);
  const lon = num(body.lon, "lon", -180, 180);
  if (lat === 0 && lon === 0) throw new Refusal("invalid_payload", "lat/lon: null island");
  const now = Date.now();
  let ts = now;
  if (body.ts !== undefined && body.ts !== null) {
    if (!Number.isInteger(body.ts) || body.ts > now + 60000 || body.ts < now - 604800000) {
      throw new Refusal("invalid_payload", "ts: out of range");
    }
    ts = body.ts;
  }
  const position = { fleet: session.fleet, vehicleId, lat, lon, ts };
  if (body.heading != null) position.heading = num(body.heading, "heading", 0, 359.999999);
  if (body.speed != null) position.speed = num(body.speed, "speed", 0);
  if (body.accuracy != null) position.accuracy = num(body.accuracy, "accuracy", 0);
  position.receivedAt = now;
  return position;
}

async function store(position) {
  await Promise.all([
    redis.set(`loc:${position.fleet}:${position.vehicleId}`, JSON.stringify(position), "EX", LOCATION_TTL),
    redis.sadd(`fleet:${position.fleet}:vehicles`, position.vehicleId),
  ]);
}

async function snapshot(fleet) {
  const ids = await redis.smembers(`fleet:${fleet}:vehicles`);
  if (ids.length === 0) return [];
  const values = await redis.mget(ids.map((v) => `loc:${fleet}:${v}`));
  return values.filter((v) => v !== null).map((v) => JSON.parse(v));
}

const errorReply = (e) => (e instanceof Refusal ? fail(e.code, e.message) : fail("unavailable", String(e.message || e)));

// ------------------------------------------------------------------ HTTP

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

const STATUS = { invalid_token: 401, token_expired: 401, unauthenticated: 401, forbidden: 403, invalid_payload: 400 };

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Refusal("payload_too_large", "body over 64 KiB"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch {
        reject(new Refusal("invalid_payload", "body: not JSON"));
      }
    });
    req.on("error", reject);
  });
}

const LOCATION_ROUTE = /^\/api\/v1\/fleets\/([^/]+)\/vehicles\/([^/]+)\/location$/;

async function handleHttp(req, res) {
  const url = req.url.split("?")[0];
  if (url === "/healthz" || url === "/readyz") return send(res, 200, { ok: true });
  const m = req.method === "PUT" && LOCATION_ROUTE.exec(url);
  if (!m) return send(res, 404, fail("not_found", "no such route"));
  try {
    const auth = req.headers.authorization || "";
    const claims = verify(auth.startsWith("Bearer ") ? auth.slice(7) : "");
    const [fleet, vehicle] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
    if (claims.fleet !== fleet) throw new Refusal("forbidden", "another fleet");
    const session = { fleet, role: claims.role, vehicle: claims.vehicle || claims.sub };
    if (session.role === "vehicle" && session.vehicle !== vehicle) throw new Refusal("forbidden", "another vehicle");
    const position = parsePosition(session, await readJson(req), vehicle);
    await store(position);
    io.of("/fleet").to(position.fleet).emit("locationupdate", position);
    send(res, 200, ok({ accepted: true }));
  } catch (e) {
    const reply = errorReply(e);
    send(res, STATUS[reply.error.code] || (reply.error.code === "payload_too_large" ? 413 : 503), reply);
  }
}

// ------------------------------------------------------------------ Socket.IO

const httpServer = http.createServer((req, res) => {
  handleHttp(req, res).catch((e) => send(res, 500, fail("unavailable", String(e))));
});
const io = new Server(httpServer, { cors: { origin: "*" }, maxHttpBufferSize: MAX_BODY });
io.adapter(createAdapter(pubClient, subClient));

const fleetNs = io.of("/fleet");

fleetNs.use(async (socket, next) => {
  try {
    const claims = verify(socket.handshake.auth && socket.handshake.auth.token);
    socket.data.session = await openSession(claims);
    next();
  } catch (e) {
    next(new Error(e instanceof Refusal ? e.code : "unavailable"));
  }
});

fleetNs.on("connection", (socket) => {
  const sessionId = socket.data.session.sessionId;
  socket.emit("session", socket.data.session);

  // Without an ack callback a failure is reported as `exception`, as the contract says.
  const handle = (event, fn) =>
    socket.on(event, async (payload, ack) => {
      let reply;
      try {
        reply = ok(await fn(payload));
      } catch (e) {
        reply = errorReply(e);
      }
      if (typeof ack === "function") ack(reply);
      else if (!reply.ok) socket.emit("exception", { event, ...reply.error });
    });

  handle("locationupdate", async (payload) => {
    const raw = await redis.get(`session:${sessionId}`);
    if (raw === null) throw new Refusal("unauthenticated", "session expired");
    const position = parsePosition(JSON.parse(raw), payload);
    await store(position);
    io.of("/fleet").to(position.fleet).emit("locationupdate", position);
    return { accepted: true };
  });

  handle("subscribe", async (payload) => {
    const session = socket.data.session;
    const fleet = (payload && payload.fleet) || session.fleet;
    if (fleet !== session.fleet) throw new Refusal("forbidden", "the session belongs to another fleet");
    socket.join(fleet);
    return { fleet, vehicles: await snapshot(fleet) };
  });

  handle("unsubscribe", async () => {
    socket.leave(socket.data.session.fleet);
    return { fleet: socket.data.session.fleet };
  });
});

httpServer.listen(PORT, HOST, () => {
  console.log(`peer-node listening on ${HOST}:${PORT}, redis ${REDIS_URL.replace(/\/\/[^@]*@/, "//")}`);
});

const shutdown = () => {
  io.close();
  redis.quit();
  pubClient.quit();
  subClient.quit();
  setTimeout(() => process.exit(0), 500).unref();
};
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
