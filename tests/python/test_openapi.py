"""Tests of the OpenAPI document served at /api/v1/openapi.json: it is a valid
OpenAPI 3 document describing every /api/v1 route with a bearer scheme, and a
schemathesis run driven by it against a live server gets no 5xx response.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from conftest import mint

SPEC_PATH = "/api/v1/openapi.json"
SCHEMATHESIS_BUDGET = 60  # seconds for the whole schemathesis run

# (method, path with parameter names erased) of every documented API operation.
OPERATIONS = {
    ("put", "/api/v1/fleets/{}/vehicles/{}/location"),
    ("post", "/api/v1/fleets/{}/locations"),
    ("get", "/api/v1/fleets/{}/vehicles"),
    ("get", "/api/v1/fleets/{}/vehicles/{}"),
    ("post", "/api/v1/fleets/{}/rooms/{}/messages"),
    ("delete", "/api/v1/sessions/{}"),
    ("put", "/api/v1/fleets/{}/geofences/{}"),
    ("get", "/api/v1/fleets/{}/geofences"),
    ("get", "/api/v1/fleets/{}/geofences/{}"),
    ("delete", "/api/v1/fleets/{}/geofences/{}"),
    ("put", "/api/v1/fleets/{}/webhooks/{}"),
    ("get", "/api/v1/fleets/{}/webhooks"),
    ("delete", "/api/v1/fleets/{}/webhooks/{}"),
}


def erase_params(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture(scope="module")
def spec(server) -> dict:
    r = requests.get(server.url + SPEC_PATH, timeout=10)
    assert r.status_code == 200, f"{SPEC_PATH} -> {r.status_code} {r.text[:300]!r}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    return r.json()


def _operations(spec: dict) -> dict:
    """{(method, erased path): operation object}, with servers' base paths applied."""
    bases = {""}
    for server in spec.get("servers") or []:
        url = server.get("url", "")
        bases.add(re.sub(r"^[a-z]+://[^/]+", "", url).rstrip("/"))
    out = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                for base in bases:
                    out[(method, erase_params(base + path))] = op
    return out


def test_openapi_document_is_valid_openapi_3(spec):
    assert str(spec.get("openapi", "")).startswith("3."), spec.get("openapi")
    validate(spec)  # raises on any violation of the OpenAPI 3.x schema


def test_openapi_describes_every_route(spec):
    ops = _operations(spec)
    missing = OPERATIONS - set(ops)
    assert not missing, f"undocumented operations: {sorted(missing)}; documented: {sorted(ops)}"
    for key in OPERATIONS:
        responses = ops[key].get("responses", {})
        assert "200" in responses, f"{key}: no 200 response documented: {sorted(responses)}"
        assert "401" in responses, f"{key}: no 401 response documented: {sorted(responses)}"


# Error statuses each operation can answer with besides 400/401/403 (see test_http_api.py).
EXTRA_STATUSES = {
    ("put", "/api/v1/fleets/{}/vehicles/{}/location"): {"413"},
    ("post", "/api/v1/fleets/{}/locations"): {"413"},
    ("post", "/api/v1/fleets/{}/rooms/{}/messages"): {"413"},
    ("get", "/api/v1/fleets/{}/vehicles/{}"): {"404"},
    ("delete", "/api/v1/sessions/{}"): {"404"},
    ("put", "/api/v1/fleets/{}/geofences/{}"): {"413"},
    ("get", "/api/v1/fleets/{}/geofences/{}"): {"404"},
    ("delete", "/api/v1/fleets/{}/geofences/{}"): {"404"},
    ("put", "/api/v1/fleets/{}/webhooks/{}"): {"413"},
    ("delete", "/api/v1/fleets/{}/webhooks/{}"): {"404"},
}


def test_openapi_documents_error_statuses(spec):
    ops = _operations(spec)
    gaps = {
        key: sorted(statuses - set(ops[key].get("responses", {})))
        for key, statuses in EXTRA_STATUSES.items()
        if key in ops and statuses - set(ops[key].get("responses", {}))
    }
    assert not gaps, f"undocumented error responses: {gaps}"


def test_openapi_bbox_is_optional_query_parameter(spec):
    op = _operations(spec)[("get", "/api/v1/fleets/{}/vehicles")]
    params = [p for p in op.get("parameters", []) if p.get("name") == "bbox"]
    assert len(params) == 1, op.get("parameters")
    assert params[0].get("in") == "query" and not params[0].get("required", False), params[0]


def test_openapi_bearer_security(spec):
    schemes = spec.get("components", {}).get("securitySchemes", {})
    bearer = {
        name for name, s in schemes.items()
        if s.get("type") == "http" and str(s.get("scheme", "")).lower() == "bearer"
    }
    assert bearer, f"no http bearer security scheme: {schemes!r}"
    ops = _operations(spec)
    for key in OPERATIONS:
        security = ops[key].get("security", spec.get("security")) or []
        used = {name for requirement in security for name in requirement}
        assert used & bearer, f"{key} does not require the bearer scheme: {security!r}"


def test_schemathesis_finds_no_server_error(server):
    """Property-based requests (valid and invalid) from the document; any 5xx fails.

    The path's fleet is pinned to the token's fleet so that generated requests reach
    the handlers instead of stopping at the fleet check."""
    fleet = "fuzz-fleet"
    token = mint("dispatcher", "fuzz-dispatcher", fleet)
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "schemathesis.cli"]
    with tempfile.TemporaryDirectory(prefix="fleetgate-schemathesis-") as tmp:
        config = Path(tmp) / "schemathesis.toml"
        config.write_text(f'[parameters]\n"path.fleet" = "{fleet}"\n')
        cmd += [
            "--config-file", str(config),
            "run", server.url + SPEC_PATH,
            "--checks", "not_a_server_error",
            "-H", f"Authorization: Bearer {token}",
            "--max-examples", "20",
            "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "5",
            "--workers", "4",
            "--seed", "20240601",
            "--generation-database", "none",
            "--no-color",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
        env["NO_COLOR"] = "1"
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=SCHEMATHESIS_BUDGET)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"")[-4000:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-4000:]
            pytest.fail(f"schemathesis did not finish within {SCHEMATHESIS_BUDGET}s:\n{out}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis exit code {proc.returncode}:\n{output[-8000:]}\nserver log:\n{server.log()}"
