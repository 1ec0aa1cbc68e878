// The hot path: vehicles publish `locationupdate` over Socket.IO, viewers
// subscribed to the whole fleet receive every fix. Measures end-to-end
// latency (vehicle send → viewer receipt, both on this k6 machine's clock),
// publish acks and connection failures.
//
//   k6 run -e FLEETGATE_JWT_SECRET=… -e VEHICLES=100 -e VIEWERS=50 -e HZ=1 k6/broadcast.js
//
// See k6/README.md for every knob.

import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import {
  config,
  FleetSocket,
  socketUrl,
  token,
  tokenTtl,
  pointOnLoop,
  nextTs,
  ms,
  setTimeout,
  setInterval,
  clearInterval,
} from './lib/socketio.js';

const e2e = new Trend('fleetgate_e2e_latency_ms', true);
const deliveries = new Counter('fleetgate_deliveries');
const batches = new Counter('fleetgate_batches');
const publishes = new Counter('fleetgate_publishes');
const accepted = new Counter('fleetgate_accepted');
const stale = new Counter('fleetgate_stale');
const ackOk = new Rate('fleetgate_ack_ok');
const ackTime = new Trend('fleetgate_ack_ms', true);
const handshake = new Trend('fleetgate_handshake_ms', true);
const connectFailed = new Rate('fleetgate_connect_error_rate');
const connectErrors = new Counter('fleetgate_connect_errors');
const disconnects = new Counter('fleetgate_disconnects');

const viewerSpan = config.warmup + config.duration + config.linger;
const ttl = tokenTtl(viewerSpan);

function scenarios() {
  const s = {};
  if (config.viewers > 0) {
    // Viewers are subscribed before the first fix and stay a little after the
    // last one, so every accepted fix can be delivered to every viewer.
    s.viewers = {
      executor: 'constant-vus',
      exec: 'viewer',
      vus: config.viewers,
      duration: ms(viewerSpan),
      gracefulStop: ms(config.ackTimeoutMs + 5000),
      tags: { role: 'viewer' },
    };
  }
  if (config.vehicles > 0) {
    s.vehicles = {
      executor: 'constant-vus',
      exec: 'vehicle',
      vus: config.vehicles,
      startTime: ms(config.warmup),
      duration: ms(config.duration),
      gracefulStop: ms(config.ackTimeoutMs + 5000),
      tags: { role: 'vehicle' },
    };
  }
  return s;
}

function thresholds() {
  const t = {
    checks: [`rate>${config.checksRate}`],
    fleetgate_connect_error_rate: [`rate<${config.failRate}`],
    fleetgate_disconnects: [`count<=${config.maxDisconnects}`],
  };
  if (config.vehicles > 0) {
    t.fleetgate_ack_ok = [`rate>${config.ackOkRate}`];
    // An empty Rate passes its threshold: require that fixes were actually stored.
    t.fleetgate_accepted = ['count>0'];
    t.fleetgate_ack_ms = [`p(99)<${config.ackP99Ms}`];
  }
  if (config.vehicles > 0 && config.viewers > 0) {
    // A run in which nothing reached a viewer is a failure whatever the latency.
    t.fleetgate_deliveries = ['count>0'];
    t.fleetgate_e2e_latency_ms = [`p(95)<${config.e2eP95Ms}`, `p(99)<${config.e2eP99Ms}`];
  }
  return t;
}

export const options = {
  scenarios: scenarios(),
  thresholds: thresholds(),
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
};

// Per VU: whether the last connection attempt failed, to back off before the next.
let lastAttemptFailed = false;
// Per VU: the newest fix time sent, kept across reconnects.
let lastTs = 0;

/** Runs a socket until the scenario's end; returns when it is closed. */
function session(url, auth, role, onReady) {
  const endAt = exec.scenario.startTime + (role === 'viewer' ? viewerSpan : config.duration);
  const left = endAt - Date.now();
  if (left < 100) {
    // Too close to the end for a useful connection; let the scenario finish.
    if (left > 0) sleep(left / 1000);
    return;
  }
  if (lastAttemptFailed) {
    // Outside any handler: a refused connection must not become a busy loop.
    lastAttemptFailed = false;
    sleep(1);
  }
  const s = new FleetSocket(url, auth, { tags: { role } });
  s.onConnectError = (code, detail) => {
    lastAttemptFailed = true;
    connectFailed.add(true, { role, code });
    connectErrors.add(1, { role, code });
    console.warn(`${role} ${exec.vu.idInTest}: connect failed: ${code} ${detail}`);
  };
  s.onConnect = (data, took) => {
    connectFailed.add(false, { role });
    handshake.add(took, { role });
    check(data, { 'namespace connect has a sid': (d) => !!d && typeof d.sid === 'string' });
    onReady(s, endAt);
  };
  s.onClose = (reason) => {
    disconnects.add(1, { role, reason });
    console.warn(`${role} ${exec.vu.idInTest}: disconnected: ${reason}`);
  };
  return s;
}

export function vehicle() {
  const id = `${config.vehiclePrefix}${exec.vu.idInTest}`;
  const auth = { token: token({ role: 'vehicle', sub: id, vehicle: id, ttlSecs: ttl }) };
  // Spread the vehicles round the loop so the map of a demo server stays readable.
  let phase = (exec.vu.idInTest * 2.399963) % (2 * Math.PI);
  const periodMs = 1000 / config.hz;

  session(socketUrl(config.baseUrl), auth, 'vehicle', (s, endAt) => {
    const publish = () => {
      if (s.closed) return;
      phase += 0.01;
      lastTs = nextTs(lastTs);
      const fix = { vehicleId: id, ...pointOnLoop(phase), ts: lastTs, heading: 90, speed: 12.5, accuracy: 5 };
      publishes.add(1);
      s.emit('locationupdate', fix, (ack, rtt) => {
        if (ack === null) {
          ackOk.add(false, { error: s.closed ? 'closed' : 'timeout' });
          return;
        }
        const ok = ack.ok === true;
        ackOk.add(ok, ok ? {} : { error: (ack.error && ack.error.code) || 'unknown' });
        ackTime.add(rtt);
        if (!ok) {
          console.warn(`vehicle ${id}: publish refused: ${JSON.stringify(ack)}`);
          return;
        }
        if (ack.data && ack.data.accepted === true) accepted.add(1);
        else stale.add(1);
      });
    };
    publish();
    const ticker = setInterval(publish, periodMs);
    setTimeout(() => {
      clearInterval(ticker);
      // Give the last acks a chance before leaving; an unanswered one counts as failed.
      const waitUntil = Date.now() + config.ackTimeoutMs;
      const drain = () => {
        if (s.pendingAcks() === 0 || Date.now() >= waitUntil) s.close();
        else setTimeout(drain, 20);
      };
      drain();
    }, Math.max(0, endAt - Date.now()));
  });
}

export function viewer() {
  const vu = exec.vu.idInTest;
  const auth = { token: token({ role: 'viewer', sub: `${config.vehiclePrefix}viewer-${vu}`, ttlSecs: ttl }) };
  const prefix = config.vehiclePrefix;
  const fleet = config.fleet;

  const receive = (p) => {
    if (!p || typeof p.vehicleId !== 'string' || !p.vehicleId.startsWith(prefix)) return;
    const now = Date.now();
    const ok = check(p, {
      'location is a 5.2 object': (x) =>
        x.fleet === fleet && typeof x.lat === 'number' && typeof x.lon === 'number' && Number.isInteger(x.ts),
    });
    if (!ok) return;
    e2e.add(now - p.ts);
    deliveries.add(1);
  };

  session(socketUrl(config.viewerUrl), auth, 'viewer', (s, endAt) => {
    s.on('locationupdate', receive);
    // With conflation on (FLEETGATE_BATCH_MS > 0) fixes arrive in batches.
    s.on('locations', (b) => {
      batches.add(1);
      if (b && Array.isArray(b.items)) b.items.forEach(receive);
    });
    s.emit('subscribe', {}, (ack) => {
      check(ack, {
        'subscribe acked ok': (a) => !!a && a.ok === true,
        'subscribe snapshot is for the fleet': (a) =>
          !!a && !!a.data && a.data.fleet === fleet && Array.isArray(a.data.vehicles),
      });
    });
    setTimeout(() => s.close(), Math.max(0, endAt - Date.now()));
  });
}
