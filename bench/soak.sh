#!/usr/bin/env bash
# Soak: steady fan-out plus connection churn against one fleetgate on a
# private Redis, sampling the server's RSS and open descriptors; memory and
# descriptors must stay flat.
#
#   bench/soak.sh                 # 30 minutes
#   SOAK_SECS=600 bench/soak.sh   # 10 minutes
#
# Load: SOAK_VEHICLES vehicles at SOAK_HZ to SOAK_VIEWERS viewers for the
# whole run, and handshake churn (connect, authenticate, close) at
# SOAK_CHURN_RATE per second beside it. Output: bench/results/<stamp>-soak.csv
# (seconds, rss_kib, fds) and a summary line, also appended to
# bench/results/<stamp>-soak.jsonl with the fan-out tool's own JSON line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SOAK_SECS=${SOAK_SECS:-1800}
SOAK_VEHICLES=${SOAK_VEHICLES:-100}
SOAK_HZ=${SOAK_HZ:-2}
SOAK_VIEWERS=${SOAK_VIEWERS:-200}
SOAK_CHURN_RATE=${SOAK_CHURN_RATE:-20}
SAMPLE_SECS=${SAMPLE_SECS:-10}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
RESULTS=${RESULTS:-$ROOT/bench/results}
STAMP=$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS/$STAMP-logs"
LOGS=$RESULTS/$STAMP-logs
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^FLEETGATE_' || true)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cargo build --release --locked -p fleetgate -p fleetgate-bench
FG=$ROOT/target/release/fleetgate
B=$ROOT/target/release/fleetgate-bench

RP=$(free_port)
taskset -c "$LOAD_CORE" redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --logfile "$LOGS/redis.log" &
PIDS+=($!)
PORT=$(free_port)
env FLEETGATE_ADDR="127.0.0.1:$PORT" FLEETGATE_METRICS_ADDR="127.0.0.1:$(free_port)" FLEETGATE_JWT_SECRET="$SECRET" \
  FLEETGATE_LOG=warn FLEETGATE_REDIS_URL="redis://127.0.0.1:$RP" FLEETGATE_RATE_EVENTS_PER_SEC=0 \
  taskset -c "$SERVER_CORE" "$FG" >"$LOGS/fleetgate.log" 2>&1 &
SRV=$!
PIDS+=("$SRV")
URL=http://127.0.0.1:$PORT
for _ in $(seq 300); do curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null && break; sleep 0.1; done

export FLEETGATE_JWT_SECRET=$SECRET
taskset -c "$LOAD_CORE" "$B" --server-pid "$SRV" --label soak --fleet soak fanout --url "$URL" \
  -V "$SOAK_VEHICLES" -H "$SOAK_HZ" -W "$SOAK_VIEWERS" --warmup 5s --duration "${SOAK_SECS}s" \
  >"$RESULTS/$STAMP-soak.jsonl" 2>"$LOGS/fanout.log" &
FAN=$!
PIDS+=("$FAN")
(
  while kill -0 "$FAN" 2>/dev/null; do
    taskset -c "$LOAD_CORE" "$B" --label churn --fleet churn storm --url "$URL" -n $((SOAK_CHURN_RATE * 10)) \
      --rate "$SOAK_CHURN_RATE" --concurrency 8 >>"$LOGS/churn.jsonl" 2>>"$LOGS/churn.log" || true
  done
) &
PIDS+=($!)

CSV=$RESULTS/$STAMP-soak.csv
echo "seconds,rss_kib,fds" >"$CSV"
start=$(date +%s)
while kill -0 "$FAN" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$SRV/status" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$SRV/fd" 2>/dev/null | wc -l)
  echo "$(($(date +%s) - start)),$rss,$fds" >>"$CSV"
  sleep "$SAMPLE_SECS"
done
wait "$FAN" || true

python3 - "$CSV" "$RESULTS/$STAMP-soak.jsonl" "$LOGS/churn.jsonl" <<'PY'
import csv, json, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
rows = [r for r in rows if int(r["rss_kib"]) > 0]
steady = [r for r in rows if int(r["seconds"]) >= 60] or rows
rss = [int(r["rss_kib"]) for r in steady]
fds = [int(r["fds"]) for r in steady]
churn = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
handshakes = sum(c.get("results", {}).get("handshakes", 0) or 0 for c in churn)
fan = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
res = fan[-1]["results"] if fan else {}
summary = {
    "scenario": "soak", "seconds": int(rows[-1]["seconds"]) if rows else 0,
    "rss_kib": {"after_60s": rss[0], "end": rss[-1], "max": max(rss)},
    "fds": {"after_60s": fds[0], "end": fds[-1], "max": max(fds)},
    "churn_runs": len(churn), "churn_handshakes": handshakes,
    "delivery_ratio": res.get("delivery_ratio"), "deliveries_per_s": res.get("deliveries_per_s"),
    "failures": fan[-1].get("failures", {}).get("total") if fan else None,
}
print(json.dumps(summary))
with open(sys.argv[2], "a") as f:
    f.write(json.dumps(summary) + "\n")
PY
