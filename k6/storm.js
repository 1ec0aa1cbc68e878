// A connection storm: new Socket.IO connections arrive at a ramping rate, as
// after a deploy, a network blip or the morning shift starting. Each one
// opens a websocket, authenticates with its handshake token, waits for the
// namespace connect (and, by default, the `session` event), then leaves.
//
//   k6 run -e FLEETGATE_JWT_SECRET=… -e STORM_RATE=200 -e STORM_RAMP=1m -e STORM_HOLD=2m k6/storm.js
//
// See k6/README.md for every knob.

import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { config, FleetSocket, socketUrl, token, tokenTtl, ms, setTimeout, clearTimeout } from './lib/socketio.js';

const handshake = new Trend('fleetgate_handshake_ms', true);
const engineOpen = new Trend('fleetgate_engine_open_ms', true);
const sessionTime = new Trend('fleetgate_session_ms', true);
const handshakes = new Counter('fleetgate_handshakes');
const failed = new Rate('fleetgate_handshake_failed');
const errors = new Counter('fleetgate_connect_errors');

const runMs = config.stormRamp + config.stormHold + config.stormRampDown;
const ttl = tokenTtl(runMs);

function stages() {
  const s = [];
  if (config.stormRamp > 0) s.push({ target: config.stormRate, duration: ms(config.stormRamp) });
  if (config.stormHold > 0) s.push({ target: config.stormRate, duration: ms(config.stormHold) });
  if (config.stormRampDown > 0) s.push({ target: 0, duration: ms(config.stormRampDown) });
  if (s.length === 0) throw new Error('STORM_RAMP, STORM_HOLD and STORM_RAMP_DOWN are all zero');
  return s;
}

// Enough VUs for the peak rate when each connection takes about a quarter of
// a second plus the time it is held open; k6 adds more up to the maximum.
const perConnSecs = 0.25 + config.stormHoldConn / 1000;
const preVus = config.stormPreVus || Math.max(5, Math.ceil(config.stormRate * perConnSecs));
const maxVus = Math.max(preVus, config.stormMaxVus || preVus * 4);

export const options = {
  scenarios: {
    storm: {
      executor: 'ramping-arrival-rate',
      exec: 'connect',
      // Without a ramp the storm starts at full rate.
      startRate: config.stormRamp > 0 ? config.stormStartRate : config.stormRate,
      timeUnit: '1s',
      preAllocatedVUs: preVus,
      maxVUs: maxVus,
      stages: stages(),
      gracefulStop: ms(config.connectTimeoutMs + config.stormHoldConn + 5000),
    },
  },
  thresholds: {
    checks: [`rate>${config.checksRate}`],
    fleetgate_handshake_failed: [`rate<${config.failRate}`],
    fleetgate_handshake_ms: [`p(95)<${config.handshakeP95Ms}`, `p(99)<${config.handshakeP99Ms}`],
    // An empty Rate passes its threshold: require that connections succeeded.
    fleetgate_handshakes: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
};

export function connect() {
  const role = config.stormRole;
  // One identity per VU: with the demo token endpoint that is one request per
  // VU, not one per connection, so the storm measures handshakes only.
  const sub = `${config.vehiclePrefix}storm-${exec.vu.idInTest}`;
  const auth = { token: token({ role, sub, vehicle: role === 'vehicle' ? sub : undefined, ttlSecs: ttl }) };
  const started = Date.now();
  const fleet = config.fleet;

  const s = new FleetSocket(socketUrl(config.baseUrl), auth, { tags: { role } });
  let session = null;
  let connected = false;
  let finished = false;
  let sessionTimer = null;

  // Called once the connection is complete (or the session event is overdue).
  const done = () => {
    if (finished) return;
    finished = true;
    // A pending timer would keep the iteration, and so the VU, busy.
    if (sessionTimer !== null) clearTimeout(sessionTimer);
    if (config.stormWaitSession) {
      check(session, {
        'session is for the fleet and role': (x) =>
          !!x && typeof x.sessionId === 'string' && x.fleet === fleet && x.role === role,
      });
    }
    if (config.stormHoldConn > 0) setTimeout(() => s.close(), config.stormHoldConn);
    else s.close();
  };

  s.onEngineOpen = () => engineOpen.add(Date.now() - started);
  s.on('session', (data) => {
    if (session !== null) return;
    session = data;
    sessionTime.add(Date.now() - started);
    if (connected) done();
  });
  s.onConnect = (data, took) => {
    connected = true;
    handshake.add(took);
    handshakes.add(1);
    failed.add(false);
    check(data, { 'namespace connect has a sid': (d) => !!d && typeof d.sid === 'string' });
    if (!config.stormWaitSession || session !== null) {
      done();
      return;
    }
    // The session event follows the connect at once; a missing one is a failed check.
    sessionTimer = setTimeout(done, config.connectTimeoutMs);
  };
  s.onConnectError = (code, detail) => {
    failed.add(true, { code });
    errors.add(1, { code });
    console.warn(`connect failed: ${code} ${detail}`);
  };
  s.onClose = (reason) => {
    if (reason !== 'client') console.warn(`dropped before leaving: ${reason}`);
  };
}
