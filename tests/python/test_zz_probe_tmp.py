import subprocess, sys
import test_openapi as t
def test_show(server, monkeypatch):
    orig = subprocess.run
    def run(*a, **k):
        p = orig(*a, **k); print(p.stdout[-6000:]); print(p.stderr[-2000:]); return p
    monkeypatch.setattr(subprocess, "run", run)
    t.test_schemathesis_finds_no_server_error(server)
