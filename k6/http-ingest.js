// HTTP ingest: positions arriving through the REST API rather than a socket,
// as from telematics boxes and back-office imports. Two scenarios at fixed
// arrival rates run side by side:
//   put   — PUT /api/v1/fleets/{fleet}/vehicles/{vehicle}/location, one fix
//   batch — POST /api/v1/fleets/{fleet}/locations, BATCH_SIZE fixes (dispatcher only)
//
//   k6 run -e FLEETGATE_JWT_SECRET=… -e PUT_RATE=200 -e BATCH_RATE=10 k6/http-ingest.js
//
// See k6/README.md for every knob.

import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { config, token, tokenTtl, pointOnLoop, nextTs, ms } from './lib/socketio.js';

const ingestOk = new Rate('fleetgate_ingest_ok');
const positions = new Counter('fleetgate_ingest_positions');
const stale = new Counter('fleetgate_stale');

const role = config.ingestRole;
if (role !== 'dispatcher' && role !== 'vehicle') throw new Error(`INGEST_ROLE=${role}: use dispatcher or vehicle`);
const ttl = tokenTtl(config.duration);
// The batch route is for dispatchers only.
const runBatch = role === 'dispatcher' && config.batchRate > 0 && config.batchSize > 0;
const runPut = config.putRate > 0;
if (config.batchSize > 1000) throw new Error(`BATCH_SIZE=${config.batchSize}: the server takes at most 1000 items`);

/** constant-arrival-rate wants an integer rate: fractional ones run per minute. */
function arrival(rate, vusPerRequest, execName) {
  const perSecond = Number.isInteger(rate);
  const pre = config.ingestVus || Math.max(2, Math.ceil(rate * vusPerRequest));
  return {
    executor: 'constant-arrival-rate',
    exec: execName,
    rate: perSecond ? rate : Math.max(1, Math.round(rate * 60)),
    timeUnit: perSecond ? '1s' : '1m',
    duration: ms(config.duration),
    preAllocatedVUs: pre,
    maxVUs: pre * 4,
    gracefulStop: '10s',
  };
}

function scenarios() {
  const s = {};
  if (runPut) s.put = arrival(config.putRate, 0.05, 'put');
  if (runBatch) s.batch = arrival(config.batchRate, 0.25, 'batch');
  if (Object.keys(s).length === 0) throw new Error('nothing to run: PUT_RATE and BATCH_RATE are both 0');
  return s;
}

function thresholds() {
  const t = {
    checks: [`rate>${config.checksRate}`],
    http_req_failed: [`rate<${config.failRate}`],
    fleetgate_ingest_ok: [`rate>${config.ackOkRate}`],
    // An empty Rate passes its threshold: require that positions were stored.
    fleetgate_ingest_positions: ['count>0'],
  };
  if (runPut) t['http_req_duration{name:put_location}'] = [`p(95)<${config.httpP95Ms}`];
  if (runBatch) t['http_req_duration{name:post_locations}'] = [`p(95)<${config.batchP95Ms}`];
  return t;
}

export const options = {
  scenarios: scenarios(),
  thresholds: thresholds(),
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
};

const base = `${config.baseUrl}/api/v1/fleets/${encodeURIComponent(config.fleet)}`;

// Per VU: its bearer token and the newest fix time it sent. Each VU owns its
// vehicles, so its fixes are never "stale" against another VU's.
let bearer = null;
let lastTs = 0;
let phase = 0;

function auth(vehicle) {
  if (bearer === null) {
    const sub = role === 'vehicle' ? vehicle : `${config.vehiclePrefix}dispatcher-${exec.vu.idInTest}`;
    bearer = token({ role, sub, vehicle: role === 'vehicle' ? vehicle : undefined, ttlSecs: ttl });
  }
  return { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json' };
}

function body(res) {
  try {
    return res.json();
  } catch (_) {
    return null;
  }
}

function fix() {
  phase += 0.01;
  return { ...pointOnLoop(phase + exec.vu.idInTest), heading: 180, speed: 8.5, accuracy: 5 };
}

export function put() {
  const vehicle = `${config.vehiclePrefix}h${exec.vu.idInTest}`;
  lastTs = nextTs(lastTs);
  const res = http.put(
    `${base}/vehicles/${encodeURIComponent(vehicle)}/location`,
    JSON.stringify({ ...fix(), ts: lastTs }),
    { headers: auth(vehicle), tags: { name: 'put_location' } },
  );
  const b = body(res);
  const ok = check(res, {
    'PUT location is 200': (r) => r.status === 200,
    'PUT location envelope is ok': () => !!b && b.ok === true && !!b.data && typeof b.data.accepted === 'boolean',
  });
  ingestOk.add(ok, { route: 'put' });
  if (!ok) {
    console.warn(`PUT ${vehicle}: ${res.status} ${String(res.body).slice(0, 300)}`);
    return;
  }
  if (b.data.accepted) positions.add(1, { route: 'put' });
  else stale.add(1, { route: 'put' });
}

export function batch() {
  const vu = exec.vu.idInTest;
  lastTs = nextTs(lastTs);
  const items = [];
  for (let i = 0; i < config.batchSize; i++) {
    items.push({ vehicleId: `${config.vehiclePrefix}b${vu}-${i}`, ...fix(), ts: lastTs });
  }
  const res = http.post(`${base}/locations`, JSON.stringify({ items }), {
    headers: auth(),
    tags: { name: 'post_locations' },
  });
  const b = body(res);
  const results = b && b.ok === true && b.data && Array.isArray(b.data.results) ? b.data.results : null;
  const ok = check(res, {
    'POST locations is 200': (r) => r.status === 200,
    'POST locations envelope is ok': () => results !== null,
    'POST locations has a result per item': () => results !== null && results.length === items.length,
    'POST locations items all ok': () => results !== null && results.every((x) => !!x && x.ok === true),
  });
  ingestOk.add(ok, { route: 'batch' });
  if (!ok) {
    console.warn(`POST batch: ${res.status} ${String(res.body).slice(0, 300)}`);
    return;
  }
  const stored = results.filter((x) => x.data && x.data.accepted === true).length;
  positions.add(stored, { route: 'batch' });
  if (stored < results.length) stale.add(results.length - stored, { route: 'batch' });
}
