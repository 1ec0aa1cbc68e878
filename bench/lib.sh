# Shell helpers shared by the bench scripts (sourced, not run).

# Stops a process: SIGTERM, up to 10 s for it to exit, then SIGKILL.
stop() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
