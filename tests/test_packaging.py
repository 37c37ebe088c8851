"""Packaging: the Dockerfile's structure, its install steps run for real in a
fresh virtualenv (no Docker engine needed), its HEALTHCHECK, and the sdist.

The steps are read from the Dockerfile itself, so the test follows it: the
builder's `pip wheel` runs on a build context made by the .dockerignore
allow-list, the final stage's `pip install` runs in a new venv from those
wheels only (--no-index), and the installed `wqd` must work.
"""

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import free_port

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
VERSION = re.search(r'^__version__ = "([^"]+)"$', (REPO / "daemon" / "wqd" / "__init__.py").read_text(), re.M)[1]


def _instructions() -> list:
    """[(stage index, INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    result, stage = [], -1
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stage += 1
        result.append((stage, instruction.upper(), arguments.strip()))
    return result


def _final_stage() -> list:
    instructions = _instructions()
    last = max(stage for stage, _, _ in instructions)
    return [(name, arguments) for stage, name, arguments in instructions if stage == last]


def _run(command, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _pip_step(subcommand: str) -> list:
    """The arguments of the Dockerfile's `pip <subcommand> ...` (in a RUN, between &&s)."""
    for _, name, arguments in _instructions():
        for part in arguments.split("&&") if name == "RUN" else ():
            words = shlex.split(part)
            if "pip" in words and words[words.index("pip") + 1:][:1] == [subcommand]:
                return words[words.index("pip") + 2:]
    raise AssertionError(f"no `pip {subcommand}` step in the Dockerfile")


def _build_context(destination: Path) -> Path:
    """What `docker build .` sends: .dockerignore is an allow-list ("*", then "!path")."""
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore starts by excluding everything"
    for rule in rules[1:]:
        if rule.startswith("!"):
            source = REPO / rule[1:].rstrip("/")
            target = destination / rule[1:].rstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            elif source.exists():
                shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The builder stage: `pip wheel` on the build context, dependencies included."""
    base = tmp_path_factory.mktemp("docker-build")
    context = _build_context(base / "context")
    wheel_dir = base / "wheels"
    args = [str(wheel_dir) if arg == "/wheels" else arg for arg in _pip_step("wheel")]
    _run([*PIP, "wheel", *args], cwd=context)
    return wheel_dir


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheels) -> Path:
    """The final stage: a fresh venv, `pip install` from the wheels only; returns its bin/."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    args = [arg.replace("/wheels", str(wheels)) for arg in _pip_step("install")]
    assert "--no-index" in args, "the image installs from the builder's wheels only"
    _run([str(venv / "bin" / "pip"), "--disable-pip-version-check", "install", *args])
    return venv / "bin"


def test_dockerfile_is_multi_stage_slim_non_root_and_complete():
    instructions = _instructions()
    froms = [arguments for _, name, arguments in instructions if name == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS builder"), froms
    args = dict(arguments.split("=", 1) for _, name, arguments in instructions if name == "ARG")
    final_base = froms[-1].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert re.fullmatch(r"python:3\.\d+-slim", final_base), final_base

    final = _final_stage()
    names = [name for name, _ in final]
    users = [arguments for name, arguments in final if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert names[-1] == "CMD" and final[-1][1] == '["wqd", "run", "-c", "/etc/wqd/wqd.yaml"]'
    assert ("COPY", "etc/docker/wqd.yaml /etc/wqd/wqd.yaml") in final
    healthcheck = next(arguments for name, arguments in final if name == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["python", "/usr/local/lib/wqd/healthcheck.py"]'), healthcheck
    assert ("COPY", "etc/docker/healthcheck.py /usr/local/lib/wqd/healthcheck.py") in final
    assert "EXPOSE" in names and ("EXPOSE", "9808") in final
    environment = " ".join(arguments for name, arguments in final if name == "ENV")
    assert "STATE_DIRECTORY=/var/lib/wqd" in environment, "the ledger of finished messages is kept"
    runs = " ".join(arguments for name, arguments in final if name == "RUN")
    assert not re.search(r"apt-get|gcc|build-essential", runs), "no build tools in the image"
    assert not any(name == "COPY" and "--from=builder" in arguments for name, arguments in final), \
        "wheels are bind-mounted, not copied into a layer"


def test_healthcheck_command_reports_the_healthz_answer_where_the_config_listens(tmp_path):
    command = next(arguments for name, arguments in _final_stage() if name == "HEALTHCHECK")
    argv = json.loads(command[command.index("CMD") + 3:])  # the exec (JSON) form
    assert argv == ["python", "/usr/local/lib/wqd/healthcheck.py"], argv
    script = REPO / "etc" / "docker" / "healthcheck.py"
    port = free_port()
    config = yaml.safe_load((REPO / "etc" / "docker" / "wqd.yaml").read_text())

    def check(listen: str) -> int:
        config["metrics"]["listen"] = listen
        (tmp_path / "wqd.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "WQD_CONFIG": str(tmp_path / "wqd.yaml")}
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30).returncode

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert check(f"127.0.0.1:{port}") == 0
        assert check(f"0.0.0.0:{port}") == 0, "a wildcard address is asked on loopback"
        assert check(f"127.0.0.1:{free_port()}") != 0, "another port than the config's is not asked"
    finally:
        server.shutdown()
        server.server_close()
    assert check(f"127.0.0.1:{port}") != 0, "unhealthy when nothing answers"


@pytest.mark.slow  # builds and installs the package
def test_the_image_install_steps_give_a_working_wqd(wheels, installed):
    assert (wheels / f"wqd-{VERSION}-py3-none-any.whl").exists(), sorted(p.name for p in wheels.iterdir())
    wqd = str(installed / "wqd")
    assert _run([wqd, "--version"]).stdout.strip() == f"wqd {VERSION}"
    for config in ("etc/wqd.yaml", "etc/docker/wqd.yaml"):
        checked = _run([wqd, "check", "-c", str(REPO / config)], cwd=installed)
        assert "OK" in checked.stdout, checked
    # The package came from the wheel, not from this checkout.
    location = _run([str(installed / "python"), "-c", "import wqd; print(wqd.__file__)"]).stdout
    assert location.startswith(str(installed.parent)), location


@pytest.mark.slow  # builds and installs the package
def test_tracing_without_the_otel_extra_is_a_configuration_error(tmp_path, installed):
    """The image installs wqd without its otel extra: no OpenTelemetry at all."""
    config = tmp_path / "wqd.yaml"
    config.write_text("tracing:\n  enabled: true\npools: [{name: p, queue: q, handler: 'wqd.examples:noop'}]\n")
    checked = subprocess.run([str(installed / "wqd"), "check", "-c", str(config)], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert checked.returncode == 78, checked
    assert checked.stderr == (f"wqd: configuration error:\n{config}:2: tracing.enabled: is true, but OpenTelemetry "
                              f"is not installed (no module opentelemetry.sdk.trace): install wqd with its otel extra, "
                              f"pip install 'wqd[otel]', or set tracing.enabled: false\n")


@pytest.mark.slow  # builds and installs the package
def test_sdist_builds_and_a_wheel_builds_from_it(tmp_path, installed):
    _run([str(installed / "pip"), "--disable-pip-version-check", "install", "build"])
    context = _build_context(tmp_path / "context")
    _run([str(installed / "python"), "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(context)])
    sdist = tmp_path / "dist" / f"wqd-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.cfg", "pyproject.toml", "daemon/wqd/__init__.py", "daemon/wqd/cli/main.py"} <= names, names
    _run([str(installed / "pip"), "--disable-pip-version-check", "wheel", "--no-deps",
          "--wheel-dir", str(tmp_path / "from-sdist"), str(sdist)])
    assert (tmp_path / "from-sdist" / f"wqd-{VERSION}-py3-none-any.whl").exists()
