// Shared pieces of the fleetgate k6 scripts: configuration from the
// environment, token minting, and a minimal Socket.IO v5 / Engine.IO v4
// client over a plain websocket.
//
// k6 has no Socket.IO client, and the official one cannot run inside k6, so
// the framing is done by hand. Only what the scripts need is implemented:
// websocket transport, one namespace per connection, text packets, acks.

import http from 'k6/http';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import { WebSocket } from 'k6/experimental/websockets';
import * as k6timers from 'k6/timers';

// --------------------------------------------------------------------------- timers

// k6 releases before the fix of grafana/k6#5199 (1.1, which the project
// pins, among them) run the next pending timer early when the one due first
// is cleared: clearing an ack timeout closed viewers' sockets seconds too
// soon. These wrappers check the deadline when called and re-arm if it has
// not come yet, so they are safe on any k6. The scripts use them instead of
// k6/timers.

/** Like setTimeout; returns a handle for clearTimeout below. */
export function setTimeout(fn, delayMs) {
  const h = { id: null, due: Date.now() + Math.max(0, delayMs), done: false };
  const arm = (wait) => {
    h.id = k6timers.setTimeout(() => {
      if (h.done) return;
      const left = h.due - Date.now();
      if (left > 0) {
        arm(left);
        return;
      }
      h.done = true;
      fn();
    }, wait);
  };
  arm(Math.max(0, delayMs));
  return h;
}

export function clearTimeout(h) {
  if (!h || h.done) return;
  h.done = true;
  k6timers.clearTimeout(h.id);
}

/** Like setInterval, on a fixed schedule (a late tick does not shift the later ones). */
export function setInterval(fn, periodMs) {
  const period = Math.max(1, periodMs);
  const h = { inner: null, done: false };
  let due = Date.now() + period;
  const next = () => {
    h.inner = setTimeout(() => {
      if (h.done) return;
      const now = Date.now();
      due += period;
      // After a long stall, skip the missed ticks instead of bursting.
      if (due <= now) due = now + period;
      next();
      fn();
    }, due - Date.now());
  };
  next();
  return h;
}

export function clearInterval(h) {
  if (!h || h.done) return;
  h.done = true;
  clearTimeout(h.inner);
}

// --------------------------------------------------------------------------- configuration

function env(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

function envNumber(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`${name}=${raw}: not a number`);
  return n;
}

function envBool(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) return fallback;
  return ['1', 'true', 'yes', 'on'].includes(String(raw).toLowerCase());
}

/** "1h2m3.5s", "500ms", "30s", or a bare number of seconds → milliseconds. */
export function parseDuration(text) {
  const s = String(text).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const units = { ms: 1, s: 1000, m: 60000, h: 3600000 };
  let total = 0;
  let rest = s;
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)/.exec(rest);
    if (!m) throw new Error(`duration ${JSON.stringify(text)}: use e.g. 30s, 2m, 1h30m, 500ms`);
    total += Number(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return total;
}

/** Milliseconds → a k6 duration string (k6 options want strings). */
export function ms(n) {
  return `${Math.max(0, Math.round(n))}ms`;
}

function trimSlash(url) {
  return url.replace(/\/+$/, '');
}

const BASE_URL = trimSlash(env('BASE_URL', 'http://127.0.0.1:3000'));
const SOCKETIO_PATH = '/' + env('SOCKETIO_PATH', '/socket.io/').replace(/^\/+|\/+$/g, '') + '/';

export const config = {
  baseUrl: BASE_URL,
  // Lets viewers sit on another replica than the vehicles, so a run also
  // measures the Redis hop between replicas.
  viewerUrl: trimSlash(env('VIEWER_URL', BASE_URL)),
  socketioPath: SOCKETIO_PATH,
  fleet: env('FLEET', 'k6'),
  // Only positions of vehicles with this prefix are measured, so the demo
  // simulator or real traffic in the same fleet does not skew the numbers.
  vehiclePrefix: env('VEHICLE_PREFIX', 'k6-'),
  secret: env('FLEETGATE_JWT_SECRET', ''),
  // Without a secret, tokens come from the `--demo` token endpoint.
  tokenUrl: env('TOKEN_URL', `${BASE_URL}/api/v1/demo/token`),
  tokenTtlSecs: envNumber('TOKEN_TTL_SECS', 0),
  issuer: env('FLEETGATE_JWT_ISSUER', ''),
  audience: env('FLEETGATE_JWT_AUDIENCE', ''),

  // broadcast.js
  vehicles: envNumber('VEHICLES', 10),
  viewers: envNumber('VIEWERS', 10),
  hz: envNumber('HZ', 1),
  duration: parseDuration(env('DURATION', '30s')),
  warmup: parseDuration(env('WARMUP', '2s')),
  linger: parseDuration(env('LINGER', '2s')),
  lat: envNumber('LAT', 37.5665),
  lon: envNumber('LON', 126.978),
  e2eP95Ms: envNumber('E2E_P95_MS', 100),
  e2eP99Ms: envNumber('E2E_P99_MS', 250),
  ackP99Ms: envNumber('ACK_P99_MS', 250),
  ackOkRate: envNumber('ACK_OK_RATE', 0.99),
  maxDisconnects: envNumber('MAX_DISCONNECTS', 0),

  // storm.js
  stormRate: envNumber('STORM_RATE', 50),
  stormStartRate: envNumber('STORM_START_RATE', 0),
  stormRamp: parseDuration(env('STORM_RAMP', '30s')),
  stormHold: parseDuration(env('STORM_HOLD', '30s')),
  stormRampDown: parseDuration(env('STORM_RAMP_DOWN', '0s')),
  stormHoldConn: parseDuration(env('STORM_CONN_HOLD', '0s')),
  stormRole: env('STORM_ROLE', 'viewer'),
  stormPreVus: envNumber('STORM_PRE_VUS', 0),
  stormMaxVus: envNumber('STORM_MAX_VUS', 0),
  handshakeP95Ms: envNumber('HANDSHAKE_P95_MS', 500),
  handshakeP99Ms: envNumber('HANDSHAKE_P99_MS', 1000),
  stormWaitSession: envBool('STORM_WAIT_SESSION', true),

  // http-ingest.js
  ingestRole: env('INGEST_ROLE', 'dispatcher'),
  putRate: envNumber('PUT_RATE', 50),
  batchRate: envNumber('BATCH_RATE', 5),
  batchSize: envNumber('BATCH_SIZE', 100),
  ingestVus: envNumber('INGEST_VUS', 0),
  httpP95Ms: envNumber('HTTP_P95_MS', 200),
  batchP95Ms: envNumber('BATCH_P95_MS', 1000),

  // every script
  failRate: envNumber('MAX_FAIL_RATE', 0.01),
  checksRate: envNumber('CHECKS_RATE', 0.99),
  connectTimeoutMs: envNumber('CONNECT_TIMEOUT_MS', 10000),
  ackTimeoutMs: envNumber('ACK_TIMEOUT_MS', 5000),
};

/** The websocket URL of the Socket.IO endpoint under an http(s) base URL. */
export function socketUrl(base) {
  return trimSlash(base).replace(/^http/, 'ws') + config.socketioPath + '?EIO=4&transport=websocket';
}

/** A lifetime for tokens that outlives the whole run: sessions end with their token. */
export function tokenTtl(runMs) {
  return config.tokenTtlSecs > 0 ? config.tokenTtlSecs : Math.ceil(runMs / 1000) + 3600;
}

// --------------------------------------------------------------------------- tokens

function b64url(value) {
  return encoding.b64encode(value, 'rawurl');
}

/** An HS256 JWT for the contract's claims (sub, fleet, role, vehicle?, exp). */
export function mintToken(claims, secret = config.secret) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const input = `${header}.${body}`;
  const sig = crypto.hmac('sha256', secret, input, 'binary');
  return `${input}.${b64url(sig)}`;
}

const demoTokens = {};

/**
 * A token for `role`. Minted locally when FLEETGATE_JWT_SECRET is set,
 * otherwise requested from a `--demo` server (cached per VU: one request per
 * identity, not per connection). Call from VU code, not the init context.
 */
export function token({ role, sub, vehicle, fleet = config.fleet, ttlSecs = 3600 }) {
  if (config.secret) {
    const claims = { sub, fleet, role, exp: Math.floor(Date.now() / 1000) + ttlSecs };
    if (vehicle !== undefined) claims.vehicle = vehicle;
    if (config.issuer) claims.iss = config.issuer;
    if (config.audience) claims.aud = config.audience;
    return mintToken(claims);
  }
  const key = `${fleet}|${role}|${sub}|${vehicle || ''}`;
  const cached = demoTokens[key];
  if (cached && cached.until > Date.now() + 60000) return cached.token;
  // The demo endpoint caps lifetimes at a day.
  const ttl = Math.min(ttlSecs, 86400);
  const body = { fleet, role, sub, ttl };
  if (vehicle !== undefined) body.vehicle = vehicle;
  const res = http.post(config.tokenUrl, JSON.stringify(body), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'demo_token' },
  });
  let tok;
  try {
    tok = res.json('data.token');
  } catch (_) {
    tok = undefined;
  }
  if (res.status !== 200 || typeof tok !== 'string') {
    throw new Error(
      `no token: set FLEETGATE_JWT_SECRET to the server's secret, or run the server with --demo ` +
        `(${config.tokenUrl} answered ${res.status} ${String(res.body).slice(0, 200)})`,
    );
  }
  demoTokens[key] = { token: tok, until: Date.now() + ttl * 1000 };
  return tok;
}

// --------------------------------------------------------------------------- Socket.IO framing

export const NAMESPACE = '/fleet';

// Socket.IO packet types (the digit after the Engine.IO "4").
const CONNECT = '0';
const DISCONNECT = '1';
const EVENT = '2';
const ACK = '3';
const CONNECT_ERROR = '4';

/**
 * One Engine.IO text frame → { eio, type, nsp, id, data }.
 * `type` is the Socket.IO packet type for Engine.IO messages ("4…"), else null.
 */
export function parsePacket(raw) {
  const eio = raw.charAt(0);
  if (eio !== '4') {
    return { eio, type: null, nsp: null, id: null, data: raw.length > 1 ? raw.slice(1) : null };
  }
  const type = raw.charAt(1);
  let i = 2;
  let nsp = '/';
  if (raw.charAt(i) === '/') {
    const comma = raw.indexOf(',', i);
    if (comma < 0) {
      nsp = raw.slice(i);
      i = raw.length;
    } else {
      nsp = raw.slice(i, comma);
      i = comma + 1;
    }
  }
  let digits = '';
  while (i < raw.length && raw.charCodeAt(i) >= 48 && raw.charCodeAt(i) <= 57) digits += raw.charAt(i++);
  const rest = raw.slice(i);
  let data = null;
  if (rest.length > 0) data = JSON.parse(rest);
  return { eio, type, nsp, id: digits === '' ? null : Number(digits), data };
}

function frame(type, payload, id) {
  const ack = id === undefined || id === null ? '' : String(id);
  const body = payload === undefined ? '' : JSON.stringify(payload);
  return `4${type}${NAMESPACE},${ack}${body}`;
}

/**
 * A Socket.IO client on the /fleet namespace over one k6 websocket.
 *
 *   const s = new FleetSocket(url, { token });
 *   s.onConnect = (data, ms) => s.emit('subscribe', {}, (ack, rtt) => …);
 *   s.on('locationupdate', (p) => …);
 *
 * `auth` is the handshake auth object. Callbacks run on the VU's event loop;
 * keep them short and never sleep() in them.
 */
export class FleetSocket {
  constructor(url, auth, { connectTimeoutMs = config.connectTimeoutMs, tags = {} } = {}) {
    this.url = url;
    this.auth = auth;
    this.handlers = {};
    this.acks = {};
    this.nextAck = 0;
    this.connected = false;
    this.closed = false;
    this.openedAt = Date.now();
    this.onConnect = null; // (data, handshakeMs)
    this.onConnectError = null; // (code, detail)
    this.onClose = null; // (reason)
    this.onEngineOpen = null; // (handshake)

    this.connectTimer = setTimeout(() => this._fail('connect_timeout', `no namespace connect in ${connectTimeoutMs} ms`), connectTimeoutMs);
    this.ws = new WebSocket(url, null, { tags });
    this.ws.onmessage = (e) => this._frame(e.data);
    this.ws.onerror = (e) => this._fail('ws_error', e && e.error ? String(e.error) : 'websocket error');
    this.ws.onclose = () => this._closed(this.connected ? 'closed_by_server' : 'closed_before_connect');
  }

  on(event, fn) {
    this.handlers[event] = fn;
    return this;
  }

  /** Sends an event; with `onAck`, it is called as (response, rttMs), or (null, rttMs) on timeout. */
  emit(event, payload, onAck, ackTimeoutMs = config.ackTimeoutMs) {
    if (!this.connected || this.closed) return false;
    let id = null;
    if (onAck) {
      id = this.nextAck++;
      const sent = Date.now();
      const timer = setTimeout(() => {
        delete this.acks[id];
        onAck(null, Date.now() - sent);
      }, ackTimeoutMs);
      this.acks[id] = { sent, timer, onAck };
    }
    this.ws.send(frame(EVENT, [event, payload], id));
    return true;
  }

  /** Acks still awaited. */
  pendingAcks() {
    return Object.keys(this.acks).length;
  }

  /** Leaves the namespace and closes the websocket. Pending acks are reported as timeouts. */
  close() {
    if (this.closed) return;
    if (this.connected) {
      try {
        this.ws.send(frame(DISCONNECT));
      } catch (_) {
        // already going away
      }
    }
    this._closed('client');
    try {
      this.ws.close();
    } catch (_) {
      // already closed
    }
  }

  _frame(raw) {
    if (typeof raw !== 'string' || raw.length === 0) return;
    const kind = raw.charAt(0);
    if (kind === '2') {
      // The server pings; an unanswered ping drops the connection after
      // pingInterval + pingTimeout.
      this.ws.send('3' + raw.slice(1));
      return;
    }
    if (kind === '0') {
      if (this.onEngineOpen) this.onEngineOpen(JSON.parse(raw.slice(1)));
      this.ws.send(`40${NAMESPACE},${this.auth === undefined || this.auth === null ? '' : JSON.stringify(this.auth)}`);
      return;
    }
    if (kind === '1') {
      this._closed('engine_close');
      return;
    }
    if (kind !== '4') return;
    let p;
    try {
      p = parsePacket(raw);
    } catch (e) {
      this._fail('bad_frame', `${e}: ${raw.slice(0, 200)}`);
      return;
    }
    if (p.nsp !== NAMESPACE) return;
    switch (p.type) {
      case CONNECT:
        this.connected = true;
        clearTimeout(this.connectTimer);
        if (this.onConnect) this.onConnect(p.data, Date.now() - this.openedAt);
        break;
      case CONNECT_ERROR: {
        const code = p.data && typeof p.data.message === 'string' ? p.data.message : 'connect_error';
        this._fail(code, JSON.stringify(p.data));
        break;
      }
      case EVENT: {
        if (!Array.isArray(p.data) || p.data.length === 0) return;
        const fn = this.handlers[p.data[0]];
        if (fn) fn(p.data.length > 2 ? p.data.slice(1) : p.data[1]);
        break;
      }
      case ACK: {
        const pending = this.acks[p.id];
        if (!pending) return;
        delete this.acks[p.id];
        clearTimeout(pending.timer);
        pending.onAck(Array.isArray(p.data) ? p.data[0] : p.data, Date.now() - pending.sent);
        break;
      }
      case DISCONNECT:
        this._closed('namespace_disconnect');
        break;
      default:
        break;
    }
  }

  _fail(code, detail) {
    if (this.closed) return;
    const wasConnected = this.connected;
    if (!wasConnected && this.onConnectError) this.onConnectError(code, detail);
    this.close();
    if (wasConnected && this.onClose) this.onClose(code);
  }

  _closed(reason) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.connectTimer);
    for (const id of Object.keys(this.acks)) {
      const pending = this.acks[id];
      clearTimeout(pending.timer);
      delete this.acks[id];
      pending.onAck(null, Date.now() - pending.sent);
    }
    if (reason !== 'client') {
      try {
        this.ws.close();
      } catch (_) {
        // already closed
      }
      if (!this.connected && this.onConnectError) {
        const cb = this.onConnectError;
        this.onConnectError = null;
        cb(reason, 'socket closed before the namespace connect');
        return;
      }
      if (this.onClose) this.onClose(reason);
    }
  }
}

// --------------------------------------------------------------------------- positions

/** A point on a loop of `radiusM` metres around (LAT, LON), `phase` radians along it. */
export function pointOnLoop(phase, radiusM = 2000) {
  const dLat = (radiusM * Math.sin(phase)) / 111320;
  const dLon = (radiusM * Math.cos(phase)) / (111320 * Math.cos((config.lat * Math.PI) / 180));
  const lat = Math.max(-89.9, Math.min(89.9, config.lat + dLat));
  let lon = config.lon + dLon;
  if (lon > 180) lon -= 360;
  if (lon < -180) lon += 360;
  return { lat: Math.round(lat * 1e6) / 1e6, lon: Math.round(lon * 1e6) / 1e6 };
}

/**
 * `now`, but strictly after `last`: the server stores and broadcasts only
 * positions newer than the stored one, so two fixes in one millisecond would
 * make the second "stale".
 */
export function nextTs(last) {
  const now = Date.now();
  return now > last ? now : last + 1;
}
