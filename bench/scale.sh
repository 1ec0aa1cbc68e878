#!/usr/bin/env bash
# Replicas on a Redis Cluster: what each replica and each Redis shard must
# process as replicas are added, at a fixed fleet load.
#
#   bench/scale.sh            # 1..4 replicas, two viewer layouts, plus shard cost
#
# A 3-primary Redis Cluster (cluster-enabled redis-server on free ports) and
# R fleetgate replicas (release build) run on this machine. fleetgate-bench
# drives VEHICLES vehicles at HZ over FLEETS fleets, spread over every
# replica, and VIEWERS viewers of whole fleets in one of two layouts:
#
#   spread:  every replica has viewers of every fleet (13 fleets, dealt
#            round-robin over replicas and fleets independently) — a
#            round-robin balancer in front of many viewers per fleet;
#   affine:  the viewers of a fleet all sit on one replica (12 fleets,
#            fleet f on replica f mod R) — fleet-aware routing — and its
#            vehicles on another, so every position still crosses replicas.
#
# Per run it records the bench's JSON line (with the CPU of every replica
# and every Redis node over the window), plus each replica's
# fleetgate_relay_received_total over the run (positions of other replicas
# it had to take in). Last, an
# ingest run (many vehicles, one viewer per fleet) gives Redis's CPU per
# stored position, single Redis and cluster. Results: one JSON line per run
# in bench/results/<stamp>-scale.jsonl, the table in <stamp>-scale.md.
#
# Knobs (environment): REPLICAS_LIST ("1 2 3 4"), VEHICLES (2000), HZ (1),
# VIEWERS (240), WARMUP (3s), DURATION (10s), INGEST_VEHICLES (2000),
# INGEST_HZ (2), REPLICA_ENV (extra FLEETGATE_*=value settings of the
# replicas, e.g. "FLEETGATE_REDIS_POOL_SIZE=1"), ONLY ("scale ingest": the
# parts to run).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^FLEETGATE_' || true)

REPLICAS_LIST=${REPLICAS_LIST:-"1 2 3 4"}
VEHICLES=${VEHICLES:-2000}
HZ=${HZ:-1}
VIEWERS=${VIEWERS:-240}
WARMUP=${WARMUP:-3s}
DURATION=${DURATION:-10s}
INGEST_VEHICLES=${INGEST_VEHICLES:-2000}
INGEST_HZ=${INGEST_HZ:-2}
REPLICA_ENV=${REPLICA_ENV:-}
ONLY=${ONLY:-"scale ingest"}
RESULTS=${RESULTS:-$ROOT/bench/results}
STAMP=$(date -u +%Y%m%d-%H%M%S)
LOGS=$RESULTS/$STAMP-logs
OUT=$RESULTS/$STAMP-scale.jsonl
mkdir -p "$RESULTS" "$LOGS"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

say() { printf '\n==> %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

for tool in python3 curl redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "bench/scale.sh needs $tool" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { # a port whose cluster bus port (+10000) is free too
  python3 - <<'EOF'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p + 10000 > 65535:
        continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    finally:
        b.close()
    print(p)
    break
EOF
}

STARTED=()
cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$LOGS"/redis-*/
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

say "building (release)"
cargo build --release --locked -p fleetgate -p fleetgate-bench >&2
FG=$ROOT/target/release/fleetgate
BENCH=$ROOT/target/release/fleetgate-bench

REDIS_PIDS=()
REDIS_PORTS=()
start_redis_node() { # port extra-args...
  local port=$1 dir=$LOGS/redis-$1
  shift
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" "$@" \
    >"$LOGS/redis-$port.log" 2>&1 &
  local pid=$!
  STARTED+=("$pid")
  REDIS_PIDS+=("$pid")
  REDIS_PORTS+=("$port")
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}

start_cluster() {
  REDIS_PIDS=() REDIS_PORTS=()
  local i
  for i in 1 2 3; do
    start_redis_node "$(free_port)" --cluster-enabled yes --cluster-config-file nodes.conf
  done
  local seeds=()
  for p in "${REDIS_PORTS[@]}"; do seeds+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes >"$LOGS/cluster-create.log" 2>&1
  for p in "${REDIS_PORTS[@]}"; do
    until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
  done
  REDIS_ENV=(FLEETGATE_REDIS_CLUSTER_NODES="$(IFS=,; echo "${seeds[*]}")")
}

start_single() {
  REDIS_PIDS=() REDIS_PORTS=()
  start_redis_node "$(free_port)"
  REDIS_ENV=(FLEETGATE_REDIS_URL="redis://127.0.0.1:${REDIS_PORTS[0]}")
}

stop_redis() {
  local pid
  for pid in "${REDIS_PIDS[@]}"; do stop "$pid"; done
  rm -rf "$LOGS"/redis-*/
}

REPLICA_PIDS=()
REPLICA_URLS=()
REPLICA_METRICS=()
start_replicas() { # count
  REPLICA_PIDS=() REPLICA_URLS=() REPLICA_METRICS=()
  local i port mport
  for ((i = 0; i < $1; i++)); do
    port=$(free_port) mport=$(free_port)
    # shellcheck disable=SC2086 # REPLICA_ENV is a list of VAR=value words
    env "${REDIS_ENV[@]}" FLEETGATE_JWT_SECRET="$SECRET" FLEETGATE_ADDR="127.0.0.1:$port" \
      FLEETGATE_METRICS_ADDR="127.0.0.1:$mport" FLEETGATE_LOG=warn FLEETGATE_SHUTDOWN_GRACE_SECS=1 \
      FLEETGATE_RATE_VEHICLE_PER_SEC=0 $REPLICA_ENV "$FG" >"$LOGS/replica-$i.log" 2>&1 &
    STARTED+=("$!")
    REPLICA_PIDS+=("$!")
    REPLICA_URLS+=("http://127.0.0.1:$port")
    REPLICA_METRICS+=("http://127.0.0.1:$mport/metrics")
  done
  for url in "${REPLICA_URLS[@]}"; do
    until curl -fsS -o /dev/null --max-time 1 "$url/readyz" 2>/dev/null; do sleep 0.1; done
  done
}

stop_replicas() {
  local pid
  for pid in "${REPLICA_PIDS[@]}"; do stop "$pid"; done
}

relay_received() { # one number per replica
  local m
  for m in "${REPLICA_METRICS[@]}"; do
    curl -fsS --max-time 2 "$m" | awk '$1 == "fleetgate_relay_received_total" { v = $2 } END { print v + 0 }'
  done
}

redis_cpu_ticks() { # utime + stime of every Redis node
  local pid total=0 f
  for pid in "${REDIS_PIDS[@]}"; do
    read -ra f <"/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}

join() { local IFS=,; echo "$*"; }

SUMMARY='
import json, sys
l = json.loads(sys.stdin.read())
r, s = l["results"], l["scale"]
print("  %s R=%d updates/s=%.0f deliveries/s=%.0f ratio=%.4f p99=%.1fms relayed in=%s redis cpu=%.2fs" % (
    l["label"], s["replicas"], r["updates_per_s"], r["deliveries_per_s"], r["delivery_ratio"],
    r["latency"]["p99_ms"], s["relay_received_each"], s["redis_cpu_s"]))
'


run() { # label layout replicas fleets vehicles hz viewers
  local label=$1 layout=$2 r=$3 fleets=$4 vehicles=$5 hz=$6 viewers=$7
  local server_args=() pid
  for pid in "${REPLICA_PIDS[@]}"; do server_args+=(--server-pid "$pid"); done
  for pid in "${REDIS_PIDS[@]}"; do server_args+=(--redis-pid "$pid"); done
  # Viewers of fleet f land on replica f mod R when R divides the fleet
  # count (both are dealt round-robin). In the affine layout the vehicles
  # go round the replicas shifted by one, so a fleet's vehicles and its
  # viewers are never on the same replica: every position crosses replicas.
  local viewer_urls vehicle_urls
  viewer_urls=$(join "${REPLICA_URLS[@]}")
  if [[ $layout == affine ]]; then
    vehicle_urls=$(join "${REPLICA_URLS[@]:1}" "${REPLICA_URLS[0]}")
  else
    vehicle_urls=$viewer_urls
  fi
  local before_relay before_cpu after_relay after_cpu
  mapfile -t before_relay < <(relay_received)
  before_cpu=$(redis_cpu_ticks)
  local started=$SECONDS
  "$BENCH" --secret "$SECRET" --label "$label" --fleet "scale-$label-$r-$RANDOM" "${server_args[@]}" \
    fanout --vehicle-url "$vehicle_urls" --viewer-url "$viewer_urls" -V "$vehicles" -H "$hz" -W "$viewers" --fleets "$fleets" \
    --warmup "$WARMUP" --duration "$DURATION" >"$LOGS/last.json" 2>"$LOGS/last.err" || {
    cat "$LOGS/last.err" >&2
    return 1
  }
  local elapsed=$((SECONDS - started))
  mapfile -t after_relay < <(relay_received)
  after_cpu=$(redis_cpu_ticks)
  python3 - "$LOGS/last.json" "$layout" "$r" "$elapsed" "$((after_cpu - before_cpu))" "$(getconf CLK_TCK)" \
    "$(join "${before_relay[@]}")" "$(join "${after_relay[@]}")" "${#REDIS_PIDS[@]}" >>"$OUT" <<'EOF'
import json, sys
path, layout, replicas, elapsed, ticks, hz, before, after, nodes = sys.argv[1:]
line = json.loads(open(path).read().strip().splitlines()[-1])
relay = [int(float(a)) - int(float(b)) for a, b in zip(after.split(","), before.split(","))]
line["scale"] = {
    "layout": layout,
    "replicas": int(replicas),
    "redis_nodes": int(nodes),
    # The whole run (connects, warm-up, window, drain), not only the window.
    "elapsed_s": int(elapsed),
    "redis_cpu_s": int(ticks) / int(hz),
    "relay_received_each": relay,
}
print(json.dumps(line))
EOF
  tail -1 "$OUT" | python3 -c "$SUMMARY" >&2
}

say "Redis Cluster, 3 primaries"
start_cluster
[[ " $ONLY " == *" scale "* ]] || REPLICAS_LIST=""
for r in $REPLICAS_LIST; do
  start_replicas "$r"
  say "$r replica(s): spread viewers"
  run spread spread "$r" 13 "$VEHICLES" "$HZ" "$VIEWERS"
  say "$r replica(s): fleet-affine viewers"
  run affine affine "$r" 12 "$VEHICLES" "$HZ" "$VIEWERS"
  stop_replicas
done

if [[ " $ONLY " == *" ingest "* ]]; then
  say "ingest: Redis CPU per stored position (cluster)"
  start_replicas 2
  run ingest-cluster ingest 2 12 "$INGEST_VEHICLES" "$INGEST_HZ" 12
  stop_replicas
fi
stop_redis

if [[ " $ONLY " == *" ingest "* ]]; then
  say "ingest: Redis CPU per stored position (single Redis)"
  start_single
  start_replicas 2
  run ingest-single ingest 2 12 "$INGEST_VEHICLES" "$INGEST_HZ" 12
  stop_replicas
  stop_redis
fi

python3 "$ROOT/bench/report.py" scale "$OUT" >"$RESULTS/$STAMP-scale.md"
cat "$RESULTS/$STAMP-scale.md"
echo "results: $OUT" >&2
