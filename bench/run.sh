#!/usr/bin/env bash
# fleetgate and the Node.js comparison peer, side by side, with one command.
#
#   bench/run.sh            # the full set (about half an hour)
#   bench/run.sh --quick    # fewer fan-out steps, short windows (a few minutes)
#
# Each server runs pinned to one core (SERVER_CORE), the load tool and Redis
# to the other (LOAD_CORE), so on a 2-core machine the server gets a whole
# core and the tool never competes with it. Results: one JSON line per run in
# bench/results/<stamp>-<scenario>.jsonl, and the Markdown table in
# bench/results/<stamp>-summary.md (also printed at the end).
#
# Knobs (environment): see bench/README.md.
set -euo pipefail

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

QUICK=${QUICK:-0}
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# Settings of the servers come from this script only, never from the caller's shell.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^FLEETGATE_' || true)

SERVERS=${SERVERS:-"node fleetgate"}
SCENARIOS=${SCENARIOS:-"fanout cpu idle storm replicas ingest fleet-ingest conflation devices"}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
REDIS_CORE=${REDIS_CORE:-$LOAD_CORE}
# fleetgate single-server runs use Redis, as the peer does (FG_STORE=memory: the embedded mode).
FG_STORE=${FG_STORE:-redis}
P99_MAX_MS=${P99_MAX_MS:-50}
RATIO_MIN=${RATIO_MIN:-0.999}
FANOUT_VEHICLES=${FANOUT_VEHICLES:-200}
FANOUT_HZ=${FANOUT_HZ:-2}
CPU_VEHICLES=${CPU_VEHICLES:-200}
CPU_HZ=${CPU_HZ:-2}
CPU_VIEWERS=${CPU_VIEWERS:-300}
REPLICA_VEHICLES=${REPLICA_VEHICLES:-200}
REPLICA_HZ=${REPLICA_HZ:-2}
REPLICA_VIEWERS=${REPLICA_VIEWERS:-300}
IDLE_COUNTS=${IDLE_COUNTS:-"1000 5000 15000"}
IDLE_SUBSCRIBE=${IDLE_SUBSCRIBE:-1}
IDLE_RATE=${IDLE_RATE:-1000}
CONNECT_RATE=${CONNECT_RATE:-1000}
STORM_CONCURRENCY=${STORM_CONCURRENCY:-64}
STORM_RATE=${STORM_RATE:-0}
INGEST_RATE=${INGEST_RATE:-2000}
INGEST_CONNECTIONS=${INGEST_CONNECTIONS:-16}
# fleet-ingest: vehicles × Hz over sockets, in FLEET_INGEST_FLEETS fleets, with a few viewers.
FLEET_INGEST_VEHICLES=${FLEET_INGEST_VEHICLES:-3000}
FLEET_INGEST_HZ=${FLEET_INGEST_HZ:-1}
FLEET_INGEST_FLEETS=${FLEET_INGEST_FLEETS:-3}
FLEET_INGEST_VIEWERS=${FLEET_INGEST_VIEWERS:-6}
BATCH_MS=${BATCH_MS:-100}
# Device ingest (fleetgate only): the same update rate through a socket, the
# OsmAnd listener and MQTT, spread over DEVICE_VEHICLES vehicles.
DEVICE_RATE=${DEVICE_RATE:-1000}
DEVICE_VEHICLES=${DEVICE_VEHICLES:-200}
# events (fleetgate only, not in the default set): the fleet-ingest load
# with the event stream off (FLEETGATE_EVENTS_MAX=0), on (the default cap),
# and on with a webhook per fleet to a local receiver answering 200.
EVENTS_CAP=${EVENTS_CAP:-10000}
# The write-window point of the conflation scenario (the default window is 10).
WRITE_WINDOW_MS=${WRITE_WINDOW_MS:-25}
# Geofences (fleetgate only, not in the default set): N geofences in one
# fleet, then HTTP ingest with vehicles roaming across them; N=0 is the base.
GEOFENCE_COUNTS=${GEOFENCE_COUNTS:-"0 100 1000 10000 100000"}
GEOFENCE_RATE=${GEOFENCE_RATE:-2000}
GEOFENCE_VEHICLES=${GEOFENCE_VEHICLES:-2000}
GEOFENCE_STEP_M=${GEOFENCE_STEP_M:-15}
GEOFENCE_DENSITY=${GEOFENCE_DENSITY:-0.5}
GEOFENCE_MIN_VERTICES=${GEOFENCE_MIN_VERTICES:-10}
GEOFENCE_MAX_VERTICES=${GEOFENCE_MAX_VERTICES:-200}
GEOFENCE_CREATE=${GEOFENCE_CREATE:-auto}
GEOFENCE_CONCURRENCY=${GEOFENCE_CONCURRENCY:-8}
# Above this many, geofences are written straight into Redis: each PUT
# reloads the fleet's whole set, so N PUTs take time quadratic in N.
GEOFENCE_HTTP_MAX=${GEOFENCE_HTTP_MAX:-1000}
GEOFENCE_ROUNDS=${GEOFENCE_ROUNDS:-1}
# After each window: how long in-flight positions may still arrive and count.
DRAIN=${DRAIN:-5s}
if ((QUICK)); then
  WARMUP=${WARMUP:-2s}
  DURATION=${DURATION:-5s}
  FANOUT_W_LIST=${FANOUT_W_LIST:-"100 200 300 500 800 1200"}
  IDLE_SETTLE=${IDLE_SETTLE:-2s}
  STORM_COUNT=${STORM_COUNT:-2000}
else
  WARMUP=${WARMUP:-5s}
  DURATION=${DURATION:-20s}
  FANOUT_W_LIST=${FANOUT_W_LIST:-"100 200 300 400 500 600 800 1000 1200 1500 2000 2500 3000 4000 5000"}
  IDLE_SETTLE=${IDLE_SETTLE:-5s}
  STORM_COUNT=${STORM_COUNT:-10000}
fi

RESULTS=${RESULTS:-$ROOT/bench/results}
STAMP=$(date -u +%Y%m%d-%H%M%S)
LOGS=$RESULTS/$STAMP-logs
mkdir -p "$RESULTS" "$LOGS"
LAST=$LOGS/last.json
# A fresh secret per run: long enough that fleetgate does not warn about it.
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

say() { printf '\n==> %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }

for tool in taskset python3 curl redis-server redis-cli node npm; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh needs $tool" >&2; exit 1; }
done
if (($(nproc) < 2)); then
  warn "only $(nproc) core: server and load tool will share it"
  LOAD_CORE=$SERVER_CORE REDIS_CORE=$SERVER_CORE
fi

# 15k idle sockets need 15k descriptors in the tool and in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
idle_counts=()
for n in $IDLE_COUNTS; do
  if [[ $FD_LIMIT != unlimited ]] && ((n + 200 > FD_LIMIT)); then
    warn "idle $n skipped: the descriptor limit is $FD_LIMIT (raise the hard limit: ulimit -Hn)"
  else
    idle_counts+=("$n")
  fi
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

STARTED=()
cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

wait_ready() { # url pid
  local i
  for ((i = 0; i < 300; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "server (pid $2) exited before it was ready; see $LOGS" >&2; return 1; }
    sleep 0.1
  done
  echo "server (pid $2) not ready at $1 after 30 s" >&2
  return 1
}

# ---------------------------------------------------------------- build

say "build (release): fleetgate, fleetgate-bench"
cargo build --release --locked -p fleetgate -p fleetgate-bench
FG_BIN=$ROOT/target/release/fleetgate
BENCH_BIN=$ROOT/target/release/fleetgate-bench
if [[ " $SERVERS " == *" node "* ]]; then
  say "npm ci (bench/peer-node)"
  (cd bench/peer-node && npm ci --no-audit --no-fund --loglevel=error)
fi

# ---------------------------------------------------------------- redis

REDIS_PORT=$(free_port)
while [[ $REDIS_PORT == 6379 ]]; do REDIS_PORT=$(free_port); done
taskset -c "$REDIS_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --logfile "$LOGS/redis.log" &
REDIS_PID=$!
STARTED+=("$REDIS_PID")
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
for ((i = 0; i < 100; i++)); do
  [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true) == PONG ]] && break
  sleep 0.1
done
flush_redis() { redis-cli -p "$REDIS_PORT" flushall >/dev/null 2>&1 || true; }

# ---------------------------------------------------------------- servers

# start_server KIND [NAME=VALUE…] — sets SRV_PID and SRV_URL (and, for
# fleetgate, SRV_METRICS_URL unless FLEETGATE_METRICS_ADDR is among the settings).
start_server() {
  local kind=$1 port metrics_port
  shift
  port=$(free_port)
  if [[ $kind == fleetgate ]]; then
    local store=()
    [[ $FG_STORE == redis ]] && store=(FLEETGATE_REDIS_URL="$REDIS_URL")
    metrics_port=$(free_port)
    SRV_METRICS_URL=http://127.0.0.1:$metrics_port
    env FLEETGATE_ADDR="127.0.0.1:$port" FLEETGATE_METRICS_ADDR="127.0.0.1:$metrics_port" \
      FLEETGATE_JWT_SECRET="$SECRET" FLEETGATE_LOG=warn FLEETGATE_SHUTDOWN_GRACE_SECS=2 "${store[@]}" "$@" \
      taskset -c "$SERVER_CORE" "$FG_BIN" >>"$LOGS/fleetgate-$port.log" 2>&1 &
    SRV_PID=$!
    STARTED+=("$SRV_PID")
    SRV_URL=http://127.0.0.1:$port
    wait_ready "$SRV_URL/readyz" "$SRV_PID"
  else
    env PORT="$port" REDIS_URL="$REDIS_URL" JWT_SECRET="$SECRET" NODE_ENV=production "$@" \
      taskset -c "$SERVER_CORE" node "$ROOT/bench/peer-node/server.js" >>"$LOGS/node-$port.log" 2>&1 &
    SRV_PID=$!
    STARTED+=("$SRV_PID")
    SRV_URL=http://127.0.0.1:$port
    wait_ready "$SRV_URL/healthz" "$SRV_PID"
  fi
}

# bench FILE LABEL ARGS… — one run of the tool on the load core; its JSON
# line is appended to the scenario's file and kept in $LAST.
bench() {
  local file=$1 label=$2
  shift 2
  : >"$LAST"
  if taskset -c "$LOAD_CORE" env FLEETGATE_JWT_SECRET="$SECRET" "$BENCH_BIN" --label "$label" \
    --redis-pid "$REDIS_PID" --redis-addr "127.0.0.1:$REDIS_PORT" "$@" >"$LAST" 2> >(tee -a "$LOGS/bench.log" >&2); then
    cat "$LAST" >>"$RESULTS/$STAMP-$file.jsonl"
  else
    warn "fleetgate-bench failed ($file, $label)"
    return 1
  fi
}

verdict() { python3 "$ROOT/bench/report.py" verdict "$LAST" "$P99_MAX_MS" "$RATIO_MIN"; }

has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

for kind in $SERVERS; do
  if has fanout; then
    say "$kind: fan-out sweep, V=$FANOUT_VEHICLES H=$FANOUT_HZ, W in $FANOUT_W_LIST"
    flush_redis
    start_server "$kind"
    for w in $FANOUT_W_LIST; do
      bench fanout "$kind" --server-pid "$SRV_PID" --fleet "sweep-$w" fanout --url "$SRV_URL" \
        -V "$FANOUT_VEHICLES" -H "$FANOUT_HZ" -W "$w" --warmup "$WARMUP" --duration "$DURATION" \
        --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || break
      v=$(verdict)
      if [[ $v != pass ]]; then
        say "$kind: sweep stops at W=$w ($v)"
        break
      fi
    done
    stop "$SRV_PID"
  fi

  if has cpu; then
    say "$kind: CPU per delivery, V=$CPU_VEHICLES H=$CPU_HZ W=$CPU_VIEWERS"
    flush_redis
    start_server "$kind"
    bench cpu "$kind" --server-pid "$SRV_PID" --fleet cpu fanout --url "$SRV_URL" \
      -V "$CPU_VEHICLES" -H "$CPU_HZ" -W "$CPU_VIEWERS" --warmup "$WARMUP" --duration "$DURATION" \
      --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || true
    stop "$SRV_PID"
  fi

  if has idle; then
    for n in "${idle_counts[@]}"; do
      say "$kind: $n idle sockets"
      flush_redis
      start_server "$kind"
      sub=()
      ((IDLE_SUBSCRIBE)) && sub=(--subscribe)
      bench idle "$kind" --server-pid "$SRV_PID" --fleet idle idle --url "$SRV_URL" -n "$n" "${sub[@]}" \
        --connect-rate "$IDLE_RATE" --settle "$IDLE_SETTLE" || true
      stop "$SRV_PID"
    done
  fi

  if has storm; then
    say "$kind: connection storm, $STORM_COUNT handshakes"
    flush_redis
    start_server "$kind"
    bench storm "$kind" --server-pid "$SRV_PID" --fleet storm storm --url "$SRV_URL" -n "$STORM_COUNT" \
      --rate "$STORM_RATE" --concurrency "$STORM_CONCURRENCY" || true
    stop "$SRV_PID"
  fi

  if has replicas; then
    say "$kind: two replicas + Redis, vehicles on A, viewers on B"
    flush_redis
    FG_STORE=redis start_server "$kind"
    a_pid=$SRV_PID a_url=$SRV_URL
    FG_STORE=redis start_server "$kind"
    b_pid=$SRV_PID b_url=$SRV_URL
    bench replicas "$kind" --server-pid "$a_pid" --server-pid "$b_pid" --fleet replicas fanout \
      --vehicle-url "$a_url" --viewer-url "$b_url" -V "$REPLICA_VEHICLES" -H "$REPLICA_HZ" -W "$REPLICA_VIEWERS" \
      --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || true
    stop "$b_pid"
    stop "$a_pid"
  fi

  if has ingest; then
    say "$kind: HTTP ingest at $INGEST_RATE req/s"
    flush_redis
    start_server "$kind"
    bench ingest "$kind" --server-pid "$SRV_PID" --fleet ingest ingest --url "$SRV_URL" --rate "$INGEST_RATE" \
      -c "$INGEST_CONNECTIONS" --warmup "$WARMUP" --duration "$DURATION" || true
    stop "$SRV_PID"
  fi

  if has fleet-ingest; then
    # The cost of an accepted update, server and Redis apart: Redis is its
    # own process on REDIS_CORE, read through /proc/<redis pid>/stat.
    say "$kind: $FLEET_INGEST_VEHICLES vehicles × $FLEET_INGEST_HZ Hz over sockets, $FLEET_INGEST_FLEETS fleets, $FLEET_INGEST_VIEWERS viewers"
    flush_redis
    redis-cli -p "$REDIS_PORT" config resetstat >/dev/null 2>&1 || true
    FG_STORE=redis start_server "$kind"
    bench fleet-ingest "$kind" --server-pid "$SRV_PID" --fleet fleet-ingest fanout --url "$SRV_URL" \
      -V "$FLEET_INGEST_VEHICLES" -H "$FLEET_INGEST_HZ" -W "$FLEET_INGEST_VIEWERS" --fleets "$FLEET_INGEST_FLEETS" \
      --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || true
    redis-cli -p "$REDIS_PORT" info commandstats >"$LOGS/fleet-ingest-$kind-commandstats.txt" 2>/dev/null || true
    stop "$SRV_PID"
  fi

  if has events && [[ $kind == fleetgate ]]; then
    # What the event stream and its outputs add to an accepted update, the
    # fleet-ingest load with each setting in turn (user and system CPU of
    # the server apart, Redis's own CPU from its /proc/<pid>/stat).
    events_run() { # LABEL SETTING… — the load on a fleetgate started with the settings
      local label=$1
      shift
      say "fleetgate: events $label: $FLEET_INGEST_VEHICLES vehicles × $FLEET_INGEST_HZ Hz, $FLEET_INGEST_FLEETS fleets"
      flush_redis
      redis-cli -p "$REDIS_PORT" config resetstat >/dev/null 2>&1 || true
      FG_STORE=redis start_server fleetgate "$@"
      if [[ $label == webhooks ]]; then
        local fleets=() i
        for ((i = 0; i < FLEET_INGEST_FLEETS; i++)); do fleets+=("events-$i"); done
        ((FLEET_INGEST_FLEETS == 1)) && fleets=(events)
        FLEETGATE_JWT_SECRET=$SECRET python3 "$ROOT/bench/webhooks.py" --register "$SRV_URL" \
          "http://127.0.0.1:$HOOK_PORT/hook" "${fleets[@]}"
      fi
      bench events "fleetgate:$label" --server-pid "$SRV_PID" --fleet events fanout --url "$SRV_URL" \
        -V "$FLEET_INGEST_VEHICLES" -H "$FLEET_INGEST_HZ" -W "$FLEET_INGEST_VIEWERS" --fleets "$FLEET_INGEST_FLEETS" \
        --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || true
      redis-cli -p "$REDIS_PORT" info commandstats >"$LOGS/events-$label-commandstats.txt" 2>/dev/null || true
      if [[ $label == webhooks ]]; then
        curl -fsS "$SRV_METRICS_URL/metrics" 2>/dev/null | grep '^fleetgate_output_events_total' >"$LOGS/events-$label-outputs.txt" || true
      fi
      stop "$SRV_PID"
    }
    HOOK_PORT=$(free_port)
    taskset -c "$LOAD_CORE" python3 "$ROOT/bench/webhooks.py" --receive "$HOOK_PORT" &
    HOOK_PID=$!
    STARTED+=("$HOOK_PID")
    events_run off FLEETGATE_EVENTS_MAX=0
    events_run stream FLEETGATE_EVENTS_MAX="$EVENTS_CAP"
    events_run webhooks FLEETGATE_EVENTS_MAX="$EVENTS_CAP" FLEETGATE_WEBHOOK_ALLOW_PRIVATE=true
    stop "$HOOK_PID"
  fi

  if has devices && [[ $kind == fleetgate ]]; then
    # The server's CPU per update on each way in, at the same rate: vehicle
    # sockets (no viewers), the Traccar Client's OsmAnd request, MQTT.
    say "fleetgate: device ingest at $DEVICE_RATE upd/s: socket, osmand, mqtt"
    flush_redis
    start_server fleetgate
    bench devices "fleetgate:socket" --server-pid "$SRV_PID" --fleet dev-socket fanout --url "$SRV_URL" \
      -V "$DEVICE_VEHICLES" -H "$(python3 -c "print($DEVICE_RATE / $DEVICE_VEHICLES)")" -W 0 --warmup "$WARMUP" \
      --duration "$DURATION" --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || true
    stop "$SRV_PID"

    flush_redis
    osmand_port=$(free_port)
    start_server fleetgate FLEETGATE_OSMAND_ADDR="127.0.0.1:$osmand_port"
    bench devices "fleetgate:osmand" --server-pid "$SRV_PID" --fleet dev-osmand ingest --form osmand \
      --url "http://127.0.0.1:$osmand_port" --rate "$DEVICE_RATE" -c "$INGEST_CONNECTIONS" \
      --vehicles "$DEVICE_VEHICLES" --warmup "$WARMUP" --duration "$DURATION" || true
    stop "$SRV_PID"

    mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    if [[ -x $mosquitto_bin ]]; then
      flush_redis
      mqtt_port=$(free_port)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n' "$mqtt_port" >"$LOGS/mosquitto.conf"
      taskset -c "$LOAD_CORE" "$mosquitto_bin" -c "$LOGS/mosquitto.conf" >>"$LOGS/mosquitto.log" 2>&1 &
      MQTT_PID=$!
      STARTED+=("$MQTT_PID")
      metrics_port=$(free_port)
      start_server fleetgate FLEETGATE_MQTT_URL="mqtt://127.0.0.1:$mqtt_port" FLEETGATE_MQTT_CLIENT_ID=bench \
        FLEETGATE_METRICS_ADDR="127.0.0.1:$metrics_port"
      for ((i = 0; i < 100; i++)); do
        curl -fsS "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null | grep -q '^fleetgate_mqtt_subscribed 1' && break
        sleep 0.1
      done
      bench devices "fleetgate:mqtt" --server-pid "$SRV_PID" --fleet dev-mqtt mqtt --broker "127.0.0.1:$mqtt_port" \
        --rate "$DEVICE_RATE" --vehicles "$DEVICE_VEHICLES" --warmup "$WARMUP" --duration "$DURATION" \
        --drain "$DRAIN" || true
      stop "$SRV_PID"
      stop "$MQTT_PID"
    else
      warn "no mosquitto: the MQTT device run is skipped (Debian package mosquitto)"
    fi
  fi

  if has geofences && [[ $kind == fleetgate ]]; then
    # The Node peer has no geofences. Per N: a fresh server and an emptied
    # Redis; the geofences are created and loaded by the server before the
    # load's warm-up, so neither is in the window. Rounds repeat the whole
    # series, so each round's ratios come from runs minutes apart.
    for ((round = 1; round <= GEOFENCE_ROUNDS; round++)); do
      for n in $GEOFENCE_COUNTS; do
        say "fleetgate: $n geofences, HTTP ingest at $GEOFENCE_RATE upd/s from $GEOFENCE_VEHICLES vehicles (round $round of $GEOFENCE_ROUNDS)"
        flush_redis
        redis-cli -p "$REDIS_PORT" config resetstat >/dev/null 2>&1 || true
        start_server fleetgate FLEETGATE_GEOFENCES_MAX="$((n > 10000 ? n : 10000))"
        bench geofences "fleetgate:r$round" --server-pid "$SRV_PID" --fleet "gf-$n" geofences --url "$SRV_URL" \
          --metrics-url "$SRV_METRICS_URL" --fences "$n" --create "$GEOFENCE_CREATE" --http-max "$GEOFENCE_HTTP_MAX" \
          --create-concurrency "$GEOFENCE_CONCURRENCY" --density "$GEOFENCE_DENSITY" --min-vertices "$GEOFENCE_MIN_VERTICES" \
          --max-vertices "$GEOFENCE_MAX_VERTICES" --rate "$GEOFENCE_RATE" \
          -c "$INGEST_CONNECTIONS" --vehicles "$GEOFENCE_VEHICLES" --step-m "$GEOFENCE_STEP_M" \
          --warmup "$WARMUP" --duration "$DURATION" || true
        redis-cli -p "$REDIS_PORT" info commandstats >"$LOGS/geofences-$n-r$round-commandstats.txt" 2>/dev/null || true
        stop "$SRV_PID"
      done
    done
  fi

  if has conflation && [[ $kind == fleetgate ]]; then
    # LABEL SETTING=VALUE: the CPU-point load on a fleetgate started with SETTING.
    conflation_run() {
      say "fleetgate: $2, V=$CPU_VEHICLES H=$CPU_HZ W=$CPU_VIEWERS"
      flush_redis
      FG_STORE=redis start_server fleetgate "$2"
      bench conflation "fleetgate:$1" --server-pid "$SRV_PID" --fleet conflation fanout --url "$SRV_URL" \
        -V "$CPU_VEHICLES" -H "$CPU_HZ" -W "$CPU_VIEWERS" --warmup "$WARMUP" --duration "$DURATION" \
        --drain "$DRAIN" --connect-rate "$CONNECT_RATE" || true
      stop "$SRV_PID"
    }
    for batch in 0 "$BATCH_MS"; do
      conflation_run "batch$batch" FLEETGATE_BATCH_MS="$batch"
    done
    conflation_run "window$WRITE_WINDOW_MS" FLEETGATE_WRITE_WINDOW_MS="$WRITE_WINDOW_MS"
  fi
done

SUMMARY=$RESULTS/$STAMP-summary.md
{
  echo "# fleetgate-bench $STAMP$( ((QUICK)) && echo ' (quick)')"
  echo
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')); server on core $SERVER_CORE," \
    "load tool on core $LOAD_CORE, redis on core $REDIS_CORE; window $DURATION after $WARMUP warm-up;" \
    "fleetgate single-server runs: store=$FG_STORE."
  echo
  python3 "$ROOT/bench/report.py" table "$RESULTS" "$STAMP" "$P99_MAX_MS" "$RATIO_MIN"
} >"$SUMMARY"
say "summary ($SUMMARY)"
cat "$SUMMARY"
