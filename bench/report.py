#!/usr/bin/env python3
"""Turns the JSON lines of one bench/run.sh run into the Markdown side-by-side
table, and judges single fan-out results for the W sweep.

    report.py table RESULTS_DIR STAMP          # Markdown on stdout
    report.py verdict FILE P99_MAX_MS RATIO_MIN  # pass | p99 | ratio | failures | tool
    report.py get FILE dotted.path              # one value of the last line
    report.py scale FILE                        # bench/scale.sh's tables
    report.py geofences FILE...                 # geofences runs: medians per N over every round
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SERVERS = [("node", "node peer"), ("fleetgate", "fleetgate")]


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_text().splitlines():
        raw = raw.strip()
        if raw:
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                pass
    return out


def get(d, path: str, default=None):
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def fmt(v, digits=1, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}{unit}"
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def tool_note(d: dict) -> str:
    notes = []
    if get(d, "tool.saturated"):
        notes.append("tool saturated")
    if get(d, "tool.fell_behind"):
        notes.append("tool behind schedule")
    if get(d, "tool.machine.contended"):
        notes.append(f"machine busy: +{get(d, 'tool.machine.other_cores', 0):.2f} cores from other processes")
    if get(d, "results.rate_met") is False:
        notes.append("offered rate not met")
    fails = get(d, "failures.total", 0)
    if fails:
        notes.append(f"{fails} failures")
    return f" ({', '.join(notes)})" if notes else ""


def verdict(d: dict, p99_max: float, ratio_min: float) -> str:
    """Why a sweep stops: the server missed a target, or the tool could not keep up."""
    if get(d, "failures.total", 0):
        return "failures"
    ratio = get(d, "results.delivery_ratio")
    if ratio is None or ratio < ratio_min:
        return "ratio"
    p99 = get(d, "results.latency.p99_ms")
    if p99 is None or p99 > p99_max:
        return "p99"
    if get(d, "tool.saturated") or get(d, "tool.fell_behind"):
        return "tool"
    return "pass"


def by_label(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("label") or "?", []).append(r)
    return out


def table(results: Path, stamp: str, p99_max: float, ratio_min: float) -> str:
    load = lambda name: by_label(lines(results / f"{stamp}-{name}.jsonl"))  # noqa: E731
    rows: list[tuple[str, dict[str, str], str]] = []

    def row(measure: str, cells: dict[str, str], target: str = "") -> None:
        rows.append((measure, cells, target))

    # Fan-out sweep.
    fan = load("fanout")
    if fan:
        any_run = next(iter(fan.values()))[0]
        v, h = get(any_run, "params.vehicles"), get(any_run, "params.hz")
        best: dict[str, str] = {}
        for label, _ in SERVERS:
            runs = sorted(fan.get(label, []), key=lambda d: get(d, "params.viewers", 0))
            passed = [d for d in runs if verdict(d, p99_max, ratio_min) == "pass"]
            last = runs[-1] if runs else None
            if not runs:
                continue
            stop = verdict(last, p99_max, ratio_min)
            top = get(passed[-1], "params.viewers") if passed else None
            if stop == "pass":
                best[label] = f"≥ {top} (sweep ended)"
            elif stop == "tool":
                best[label] = f"≥ {top or get(last, 'params.viewers')} (load tool limit)"
            else:
                best[label] = f"{top if top is not None else '< ' + str(get(runs[0], 'params.viewers'))} (next step failed on {stop})"
        row(f"fan-out V={v} H={h}: most viewers meeting the target", best, f"p99 ≤ {p99_max:g} ms, ratio ≥ {ratio_min:g}")
        ws = sorted({get(d, "params.viewers") for rs in fan.values() for d in rs})
        for w in ws:
            cells = {}
            for label, _ in SERVERS:
                d = next((d for d in fan.get(label, []) if get(d, "params.viewers") == w), None)
                if d:
                    cells[label] = (
                        f"{fmt(get(d, 'results.deliveries_per_s'), 0)}/s · p50 {fmt(get(d, 'results.latency.p50_ms'), 1)}"
                        f" / p99 {fmt(get(d, 'results.latency.p99_ms'), 1)} ms · ratio {fmt(get(d, 'results.delivery_ratio'), 4)}"
                        f"{tool_note(d)}"
                    )
            row(f"fan-out W={w}: deliveries/s · latency · ratio", cells, f"p99 ≤ {p99_max:g} ms, ratio ≥ {ratio_min:g}")

    # CPU per delivery.
    cpu = load("cpu")
    if cpu:
        d0 = next(iter(cpu.values()))[0]
        tag = f"{fmt(get(d0, 'results.target_updates_per_s'), 0)} upd/s × {get(d0, 'params.viewers')} viewers"
        pick = lambda label: (cpu.get(label) or [None])[-1]  # noqa: E731
        row(f"{tag}: server CPU per delivery", {l: fmt(get(pick(l), "results.server.cpu_us_per_delivery"), 2, " µs") + tool_note(pick(l)) for l, _ in SERVERS if pick(l)}, "lower")
        row(f"{tag}: server CPU per delivery, user / system", {l: f"{fmt(get(pick(l), 'results.server.user_us_per_delivery'), 2)} / {fmt(get(pick(l), 'results.server.system_us_per_delivery'), 2)} µs" for l, _ in SERVERS if pick(l)}, "user ≤ 0.3 µs")
        row(f"{tag}: server CPU (cores)", {l: fmt(get(pick(l), "results.server.cpu_util"), 2) for l, _ in SERVERS if pick(l)}, "lower")
        row(f"{tag}: deliveries/s · ratio", {l: f"{fmt(get(pick(l), 'results.deliveries_per_s'), 0)} · {fmt(get(pick(l), 'results.delivery_ratio'), 4)}" for l, _ in SERVERS if pick(l)}, f"ratio ≥ {ratio_min:g}")
        row(f"{tag}: latency p50 / p99 / max", {l: f"{fmt(get(pick(l), 'results.latency.p50_ms'), 1)} / {fmt(get(pick(l), 'results.latency.p99_ms'), 1)} / {fmt(get(pick(l), 'results.latency.max_ms'), 1)} ms" for l, _ in SERVERS if pick(l)}, f"p99 ≤ {p99_max:g} ms")
        row(f"{tag}: server RSS", {l: fmt(get(pick(l), "results.server.rss_bytes", 0) / 1048576, 1, " MiB") for l, _ in SERVERS if pick(l)}, "lower")
        row(f"{tag}: Redis commands/s (publishes/s)", {l: f"{fmt(get(pick(l), 'results.redis.info.commands_per_s'), 0)} ({fmt(get(pick(l), 'results.redis.info.publish_per_s'), 0)})" for l, _ in SERVERS if pick(l)}, "lower")

    # Idle sockets.
    idle = load("idle")
    if idle:
        counts = sorted({get(d, "params.count") for rs in idle.values() for d in rs})
        for n in counts:
            cells = {}
            for label, _ in SERVERS:
                d = next((d for d in idle.get(label, []) if get(d, "params.count") == n), None)
                if d:
                    per = get(d, "results.server.rss_per_conn_bytes")
                    redis_per = get(d, "results.redis.rss_per_conn_bytes")
                    extra = f" + Redis {fmt(redis_per / 1024, 1)} KiB" if redis_per else ""
                    cells[label] = (
                        f"{fmt(per / 1024 if per is not None else None, 1)} KiB/conn{extra} · "
                        f"{get(d, 'results.open')} open at {fmt(get(d, 'results.opened_per_s'), 0)}/s · "
                        f"fds {get(d, 'results.server.fds_after')}{tool_note(d)}"
                    )
            sub = "subscribed" if any(get(d, "params.subscribe") for rs in idle.values() for d in rs) else "not subscribed"
            row(f"idle {n} sockets ({sub}): server RSS per connection", cells, "lower")

    # Storm.
    storm = load("storm")
    if storm:
        pick = lambda label: (storm.get(label) or [None])[-1]  # noqa: E731
        d0 = next(iter(storm.values()))[0]
        how = f"{get(d0, 'params.count')} conns, {'rate ' + fmt(get(d0, 'params.rate'), 0) if get(d0, 'params.rate') else str(get(d0, 'params.concurrency')) + ' in flight'}"
        row(f"storm ({how}): handshakes/s", {l: fmt(get(pick(l), "results.handshakes_per_s"), 0) + tool_note(pick(l)) for l, _ in SERVERS if pick(l)}, "higher")
        row("storm: handshake p50 / p99", {l: f"{fmt(get(pick(l), 'results.handshake.p50_ms'), 1)} / {fmt(get(pick(l), 'results.handshake.p99_ms'), 1)} ms" for l, _ in SERVERS if pick(l)}, "lower")
        row("storm: server CPU per handshake", {l: fmt(get(pick(l), "results.server.cpu_us_per_handshake"), 0, " µs") for l, _ in SERVERS if pick(l)}, "lower")

    # Replicas.
    rep = load("replicas")
    if rep:
        pick = lambda label: (rep.get(label) or [None])[-1]  # noqa: E731
        d0 = next(iter(rep.values()))[0]
        tag = f"2 replicas, A→B, {fmt(get(d0, 'results.target_updates_per_s'), 0)} upd/s × {get(d0, 'params.viewers')}"
        row(f"{tag}: latency p50 / p99", {l: f"{fmt(get(pick(l), 'results.latency.p50_ms'), 1)} / {fmt(get(pick(l), 'results.latency.p99_ms'), 1)} ms{tool_note(pick(l))}" for l, _ in SERVERS if pick(l)}, f"p99 ≤ {p99_max:g} ms")
        row(f"{tag}: ratio · CPU per delivery (both replicas)", {l: f"{fmt(get(pick(l), 'results.delivery_ratio'), 4)} · {fmt(get(pick(l), 'results.server.cpu_us_per_delivery'), 2)} µs" for l, _ in SERVERS if pick(l)}, f"ratio ≥ {ratio_min:g}")

    # HTTP ingest.
    ing = load("ingest")
    if ing:
        pick = lambda label: (ing.get(label) or [None])[-1]  # noqa: E731
        d0 = next(iter(ing.values()))[0]
        tag = f"HTTP ingest (target {fmt(get(d0, 'params.rate'), 0)} req/s, {get(d0, 'params.connections')} conns)"
        row(f"{tag}: req/s", {l: fmt(get(pick(l), "results.requests_per_s"), 0) + tool_note(pick(l)) for l, _ in SERVERS if pick(l)}, "= target")
        row(f"{tag}: p50 / p99 · non-200", {l: f"{fmt(get(pick(l), 'results.latency.p50_ms'), 1)} / {fmt(get(pick(l), 'results.latency.p99_ms'), 1)} ms · {get(pick(l), 'results.non_200')}" for l, _ in SERVERS if pick(l)}, "non-200 = 0")
        row(f"{tag}: server CPU per request", {l: fmt(get(pick(l), "results.server.cpu_us_per_request"), 0, " µs") for l, _ in SERVERS if pick(l)}, "lower")

    # Socket ingest: what an accepted update costs, server and Redis apart.
    fi = load("fleet-ingest")
    if fi:
        pick = lambda label: (fi.get(label) or [None])[-1]  # noqa: E731
        d0 = next(iter(fi.values()))[0]
        tag = f"{get(d0, 'params.vehicles')} vehicles × {fmt(get(d0, 'params.hz'), 0)} Hz, {get(d0, 'params.viewers')} viewers"
        row(f"{tag}: accepted upd/s · ack p99", {l: f"{fmt(get(pick(l), 'results.updates_per_s'), 0)} · {fmt(get(pick(l), 'results.ack.p99_ms'), 1)} ms{tool_note(pick(l))}" for l, _ in SERVERS if pick(l)}, "every update acked")
        row(f"{tag}: server CPU per accepted update (user / system)", {l: f"{fmt(get(pick(l), 'results.server.cpu_us_per_update'), 1, ' µs')} ({fmt(get(pick(l), 'results.server.user_us_per_update'), 1)} / {fmt(get(pick(l), 'results.server.system_us_per_update'), 1)})" for l, _ in SERVERS if pick(l)}, "≤ 1/8 of the peer")
        row(f"{tag}: Redis CPU per accepted update", {l: fmt(redis_us_per_update(pick(l)), 1, " µs") for l, _ in SERVERS if pick(l)}, "≤ 1/7 of the peer")
        row(f"{tag}: latency p50 / p99 · ratio", {l: f"{fmt(get(pick(l), 'results.latency.p50_ms'), 1)} / {fmt(get(pick(l), 'results.latency.p99_ms'), 1)} ms · {fmt(get(pick(l), 'results.delivery_ratio'), 4)}" for l, _ in SERVERS if pick(l)}, f"p99 ≤ {p99_max:g} ms")
        row(f"{tag}: Redis commands/s (publishes/s)", {l: f"{fmt(get(pick(l), 'results.redis.info.commands_per_s'), 0)} ({fmt(get(pick(l), 'results.redis.info.publish_per_s'), 0)})" for l, _ in SERVERS if pick(l)}, "lower")
    # Device ingest (fleetgate only): the same update rate through each way in.
    dev = load("devices")
    if dev:
        ways = (
            ("fleetgate:socket", "vehicle sockets", "results.server.cpu_us_per_update", "results.ack.p99_ms"),
            ("fleetgate:osmand", "OsmAnd (Traccar Client)", "results.server.cpu_us_per_request", "results.latency.p99_ms"),
            ("fleetgate:mqtt", "MQTT (publish → ack topic)", "results.server.cpu_us_per_request", "results.latency.p99_ms"),
        )
        for label, name, cpu_field, p99_field in ways:
            d = (dev.get(label) or [None])[-1]
            if not d:
                continue
            rate = get(d, "params.rate") or get(d, "results.target_updates_per_s")
            cells = {"fleetgate": f"{fmt(get(d, cpu_field), 1, ' µs')} · p99 {fmt(get(d, p99_field), 1)} ms{tool_note(d)}"}
            row(f"Ingest via {name} at {fmt(rate, 0)} upd/s: server CPU per update · p99", cells, "lower")

    # Conflation (fleetgate only; the node column is the same load without conflation).
    con = load("conflation")
    if con:
        node = (cpu.get("node") or [None])[-1] if cpu else None
        for batch in ("0", "100"):
            d = (con.get(f"fleetgate:batch{batch}") or [None])[-1]
            if not d:
                continue
            cells = {"fleetgate": fmt(get(d, "results.server.deliveries_per_cpu_ms"), 1) + tool_note(d)}
            if batch == "0" and node:
                cells["node"] = fmt(get(node, "results.server.deliveries_per_cpu_ms"), 1)
            row(f"FLEETGATE_BATCH_MS={batch}: positions delivered per server CPU-ms", cells, "higher")
            cells = {"fleetgate": f"{fmt(get(d, 'results.redis.info.publish_per_s'), 0)} / {fmt(get(d, 'results.redis.info.commands_per_s'), 0)}"}
            if batch == "0" and node:
                cells["node"] = f"{fmt(get(node, 'results.redis.info.publish_per_s'), 0)} / {fmt(get(node, 'results.redis.info.commands_per_s'), 0)}"
            row(f"FLEETGATE_BATCH_MS={batch}: Redis publishes/s / commands/s", cells, "lower")
            cells = {"fleetgate": f"{fmt(get(d, 'results.latency.p50_ms'), 1)} / {fmt(get(d, 'results.latency.p99_ms'), 1)} ms · ratio {fmt(get(d, 'results.delivery_ratio'), 4)}"}
            row(f"FLEETGATE_BATCH_MS={batch}: latency p50 / p99 · ratio", cells, "")
        for label, runs in sorted(con.items()):
            if not label.startswith("fleetgate:window"):
                continue
            d, ms = runs[-1], label.removeprefix("fleetgate:window")
            row(f"FLEETGATE_WRITE_WINDOW_MS={ms}: server CPU per delivery (user / system)", {"fleetgate": fmt(get(d, "results.server.cpu_us_per_delivery"), 2, " µs") + f" ({fmt(get(d, 'results.server.user_us_per_delivery'), 2)} / {fmt(get(d, 'results.server.system_us_per_delivery'), 2)})" + tool_note(d)}, "≤ 1.6 µs")
            cells = {"fleetgate": f"{fmt(get(d, 'results.latency.p50_ms'), 1)} / {fmt(get(d, 'results.latency.p99_ms'), 1)} ms · ratio {fmt(get(d, 'results.delivery_ratio'), 4)}"}
            row(f"FLEETGATE_WRITE_WINDOW_MS={ms}: latency p50 / p99 · ratio", cells, "p99 ≤ 50 ms")

    out = []
    if rows:
        out = ["| measure | node peer | fleetgate | target |", "|---|---|---|---|"]
        for measure, cells, target in rows:
            out.append(f"| {measure} | {cells.get('node', '–')} | {cells.get('fleetgate', '–')} | {target} |")
    ev = lines(results / f"{stamp}-events.jsonl")
    if ev:
        if out:
            out.append("")
        out.append(events_table(ev))
    gf = lines(results / f"{stamp}-geofences.jsonl")
    if gf:
        if out:
            out.append("")
        out.append(geofence_table(gf))
    return "\n".join(out)


def events_table(rows: list[dict]) -> str:
    """bench/run.sh's events scenario: the fleet-ingest load with the event
    stream off, on, and on with a webhook per fleet, side by side."""
    runs = by_label(rows)
    order = [("fleetgate:off", "stream off"), ("fleetgate:stream", "stream on"), ("fleetgate:webhooks", "stream + webhooks")]
    present = [(label, name) for label, name in order if label in runs]
    off = (runs.get("fleetgate:off") or [None])[-1]
    d0 = rows[0]
    tag = f"{get(d0, 'params.vehicles')} vehicles × {fmt(get(d0, 'params.hz'), 0)} Hz"
    out = [f"| events: {tag} | " + " | ".join(name for _, name in present) + " |", "|---" * (len(present) + 1) + "|"]

    def line(measure: str, cell) -> None:
        out.append(f"| {measure} | " + " | ".join(cell(runs[label][-1]) for label, _ in present) + " |")

    def plus(d: dict, value, base) -> str:
        return "" if d is off or value is None or base is None else f" ({value - base:+.1f})"

    line("accepted upd/s · ack p99", lambda d: f"{fmt(get(d, 'results.updates_per_s'), 0)} · {fmt(get(d, 'results.ack.p99_ms'), 1)} ms{tool_note(d)}")
    line("server CPU per accepted update (user / system)", lambda d: (
        f"{fmt(get(d, 'results.server.cpu_us_per_update'), 1, ' µs')}{plus(d, get(d, 'results.server.cpu_us_per_update'), get(off, 'results.server.cpu_us_per_update') if off else None)}"
        f" ({fmt(get(d, 'results.server.user_us_per_update'), 1)} / {fmt(get(d, 'results.server.system_us_per_update'), 1)})"))
    line("Redis CPU per accepted update", lambda d: f"{fmt(redis_us_per_update(d), 1, ' µs')}{plus(d, redis_us_per_update(d), redis_us_per_update(off) if off else None)}")
    line("Redis commands/s", lambda d: fmt(get(d, "results.redis.info.commands_per_s"), 0))
    line("latency p50 / p99 · ratio", lambda d: f"{fmt(get(d, 'results.latency.p50_ms'), 1)} / {fmt(get(d, 'results.latency.p99_ms'), 1)} ms · {fmt(get(d, 'results.delivery_ratio'), 4)}")
    return "\n".join(out)


def geofence_table(rows: list[dict]) -> str:
    """bench/run.sh's geofences scenario (fleetgate only: the Node peer has
    no geofences): one row per run, each against the N=0 run of its round."""

    def pct(v, base):
        if v is None or not base:
            return "–"
        return f"{(v / base - 1) * 100:+.0f} %"

    d0 = rows[0]
    out = [
        f"Geofences (fleetgate only; the Node peer has none): HTTP ingest at "
        f"{fmt(get(d0, 'params.rate'), 0)} req/s over {get(d0, 'params.connections')} connections, "
        f"{get(d0, 'params.vehicles')} vehicles roaming {fmt(get(d0, 'params.step_m'), 0)} m per update, "
        f"geofences covering {fmt(get(d0, 'params.geofences.density'), 2)} of the area on average "
        f"({fmt((1 - get(d0, 'params.geofences.circles', 0)) * 100, 0)} % polygons of "
        f"{'–'.join(str(v) for v in get(d0, 'params.geofences.vertices', []))} vertices, the rest circles, "
        f"radii {'–'.join(fmt(v, 0) for v in get(d0, 'params.geofences.radius_m', []))} m). "
        "Target: server CPU per update ≤ +20 % of N=0, no extra Redis round trip (script calls per update).",
        "",
        "| round | geofences | created (via, time) | area (km) | upd/s | server CPU µs/upd (user / system) | vs N=0 "
        "| Redis CPU µs/upd | vs N=0 | script calls / Redis commands per upd | crossings/s | vehicles inside at end "
        "| p50 / p99 ms |",
        "|---|---:|---|---|---:|---|---:|---:|---:|---|---:|---:|---|",
    ]
    base: dict[str, dict] = {}
    for d in rows:
        if get(d, "results.geofences.count") == 0:
            base.setdefault(d.get("label") or "?", d)
    for d in rows:
        b = base.get(d.get("label") or "?")
        g = get(d, "results.geofences", {})
        srv = get(d, "results.server.cpu_us_per_update")
        red = get(d, "results.redis.cpu_us_per_update")
        inside = g.get("vehicles_inside_at_end") or {}
        created = "–" if g.get("count") == 0 else f"{g.get('created_via')}, {fmt(g.get('create_s'), 1)} s"
        area = " × ".join(fmt(v, 1) for v in g.get("area_km", []))
        if g.get("load_error"):
            out.append(
                f"| {(d.get('label') or '?').split(':')[-1]} | {g.get('count')} | {created} | – "
                f"| 0: not loaded after {fmt(g.get('load_s'), 0)} s ({g['load_error']}) | – | – | – | – | – | – | – | – |"
            )
            continue
        out.append(
            f"| {(d.get('label') or '?').split(':')[-1]} | {g.get('count')} | {created} | {area} "
            f"| {fmt(get(d, 'results.requests_per_s'), 0)} "
            f"| {fmt(srv, 1)} ({fmt(get(d, 'results.server.user_us_per_update'), 1)} / {fmt(get(d, 'results.server.system_us_per_update'), 1)}) "
            f"| {pct(srv, get(b, 'results.server.cpu_us_per_update')) if b is not d else 'base'} "
            f"| {fmt(red, 1)} | {pct(red, get(b, 'results.redis.cpu_us_per_update')) if b is not d else 'base'} "
            f"| {fmt(g.get('evalsha_per_update'), 3)} / {fmt(g.get('redis_commands_per_update'), 2)} "
            f"| {fmt(g.get('events_per_s'), 1)} "
            f"| {fmt(inside.get('share', 0) * 100 if inside else None, 0)} % ({fmt(inside.get('mean_fences'), 2)} each) "
            f"| {fmt(get(d, 'results.latency.p50_ms'), 1)} / {fmt(get(d, 'results.latency.p99_ms'), 1)}{tool_note(d)} |"
        )
    return "\n".join(out)


def geofence_medians(paths: list[Path]) -> str:
    """Several runs of the geofences scenario folded into one row per N:
    medians over every round, each round's N against that round's N=0."""
    import statistics

    runs = [(p, d) for p in paths for d in lines(p)]
    base = {(p, d.get("label")): d for p, d in runs if get(d, "results.geofences.count") == 0}
    by_n: dict[int, list[tuple[dict, dict | None]]] = {}
    for p, d in runs:
        by_n.setdefault(get(d, "results.geofences.count"), []).append((d, base.get((p, d.get("label")))))

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def ratio(d, b, path):
        v, bv = get(d, path), get(b, path) if b else None
        return v / bv - 1 if v is not None and bv else None

    def spread(values):
        values = [v * 100 for v in values if v is not None]
        return f"{min(values):+.0f} … {max(values):+.0f} %" if values else "–"

    out = [
        "| geofences | runs loaded | server CPU µs/upd (user / system) | vs N=0: median (range) | Redis CPU µs/upd "
        "| vs N=0: median (range) | script calls per batch · HSET · SADD+SREM per upd | crossings/s | evaluation µs per batch "
        "| server RSS | p50 / p99 ms |",
        "|---:|---|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for n in sorted(by_n):
        rs = by_n[n]
        ok = [(d, b) for d, b in rs if not get(d, "results.geofences.load_error")]
        if not ok:
            out.append(f"| {n} | 0 of {len(rs)} | – | – | – | – | – | – | – | – | – |")
            continue
        m = lambda path: med(get(d, path) for d, _ in ok)  # noqa: E731
        srv = [ratio(d, b, "results.server.cpu_us_per_update") for d, b in ok]
        red = [ratio(d, b, "results.redis.cpu_us_per_update") for d, b in ok]
        calls = med(get(d, "results.geofences.evalsha_per_update") / get(d, "results.geofences.batches_per_update") for d, _ in ok if get(d, "results.geofences.batches_per_update"))
        rel = lambda values: "base" if n == 0 or med(values) is None else f"{med(values) * 100:+.1f} % ({spread(values)})"  # noqa: E731
        per_cmd = lambda c: m(f"results.geofences.redis_command_calls_per_update.{c}") or 0.0  # noqa: E731
        out.append(
            f"| {n} | {len(ok)} of {len(rs)} | {fmt(m('results.server.cpu_us_per_update'), 1)} "
            f"({fmt(m('results.server.user_us_per_update'), 1)} / {fmt(m('results.server.system_us_per_update'), 1)}) "
            f"| {rel(srv)} | {fmt(m('results.redis.cpu_us_per_update'), 1)} | {rel(red)} "
            f"| {fmt(calls, 2)} · {fmt(per_cmd('hset'), 2)} · {fmt(per_cmd('sadd') + per_cmd('srem'), 3)} "
            f"| {fmt(m('results.geofences.events_per_s'), 1)} | {fmt(m('results.geofences.evaluation_us_per_batch'), 1)} "
            f"| {fmt(m('results.server.rss_bytes') / 1048576, 0, ' MiB')} "
            f"| {fmt(m('results.latency.p50_ms'), 2)} / {fmt(m('results.latency.p99_ms'), 1)} |"
        )
    return "\n".join(out) + "\n"


def redis_us_per_update(d: dict):
    """Redis CPU (every node) over the window per update accepted in it."""
    cpu, accepted = get(d, "results.redis.cpu_s"), get(d, "results.updates_accepted_in_window")
    return cpu * 1e6 / accepted if cpu is not None and accepted else None


def scale_table(path: Path) -> str:
    """bench/scale.sh: per-replica relay intake and CPU as replicas are added,
    and Redis's CPU per stored position."""
    rows = lines(path)

    def cores(d: dict, what: str) -> str:
        window = get(d, "results.window_s") or 1.0
        return ", ".join(f"{c / window:.2f}" for c in get(d, f"results.{what}.cpu_s_each", []))

    out = [
        "| layout | replicas | updates/s | deliveries/s | ratio | p99 ms "
        "| relayed in, each replica (share of all updates) | CPU, each replica (cores) "
        "| server CPU µs/update (all replicas) | Redis CPU, each node (cores) | Redis CPU µs/update (all nodes) |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|---:|",
    ]
    ingest = []
    for d in rows:
        sc = d.get("scale", {})
        if sc.get("layout") == "ingest":
            ingest.append(d)
            continue
        # Both over the whole run: the share of all updates sent that each
        # replica had to take in from the others.
        sent = max(get(d, "results.updates_sent", 1), 1)
        relay = ", ".join(f"{n / sent:.2f}" for n in sc.get("relay_received_each", []))
        out.append(
            f"| {sc.get('layout')} | {sc.get('replicas')} | {fmt(get(d, 'results.updates_per_s'))} "
            f"| {fmt(get(d, 'results.deliveries_per_s'))} | {fmt(get(d, 'results.delivery_ratio'), 4)} "
            f"| {fmt(get(d, 'results.latency.p99_ms'))} | {relay} | {cores(d, 'server')} "
            f"| {fmt(get(d, 'results.server.cpu_us_per_update'))} | {cores(d, 'redis')} "
            f"| {fmt(redis_us_per_update(d))}{tool_note(d)} |"
        )
    if ingest:
        out += [
            "",
            "| Redis | nodes | updates/s | Redis CPU, each node (cores) | Redis CPU µs/update (all nodes) "
            "| server CPU µs/update | ack p99 ms |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        for d in ingest:
            sc = d["scale"]
            kind = "cluster" if sc.get("redis_nodes", 1) > 1 else "single"
            out.append(
                f"| {kind} | {sc.get('redis_nodes')} | {fmt(get(d, 'results.updates_per_s'))} | {cores(d, 'redis')} "
                f"| {fmt(redis_us_per_update(d))} | {fmt(get(d, 'results.server.cpu_us_per_update'))} "
                f"| {fmt(get(d, 'results.ack.p99_ms'))}{tool_note(d)} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "table" and len(argv) >= 4:
        p99 = float(argv[4]) if len(argv) > 4 else 50.0
        ratio = float(argv[5]) if len(argv) > 5 else 0.999
        print(table(Path(argv[2]), argv[3], p99, ratio))
        return 0
    if cmd == "verdict" and len(argv) == 5:
        rows = lines(Path(argv[2]))
        print(verdict(rows[-1], float(argv[3]), float(argv[4])) if rows else "failures")
        return 0
    if cmd == "scale" and len(argv) == 3:
        print(scale_table(Path(argv[2])), end="")
        return 0
    if cmd == "geofences" and len(argv) >= 3:
        print(geofence_medians([Path(a) for a in argv[2:]]), end="")
        return 0
    if cmd == "get" and len(argv) == 4:
        rows = lines(Path(argv[2]))
        print(get(rows[-1], argv[3], "") if rows else "")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
