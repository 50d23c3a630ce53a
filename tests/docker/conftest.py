"""A real Docker engine for the `docker` tier, and the project's image built once per test session.

`local-docker.sh` (in ../shared/tools beside the checkout) installs docker.io the first time, starts
a dockerd without bridge or iptables, and builds a stand-in for the CUDA PyTorch base (Debian
bookworm + Python 3.11 + the CPU torch in /opt/conda; ~3 minutes once, then kept). docker/Dockerfile
is built against it with `--build-arg BASE=...`; builds reach the package index with
`--network host`. The tests skip, saying why, only where the engine cannot start (no script, not
root, start failed). The build time (cold or from the layer cache) and the image size are printed
in the terminal summary (kept in pytest's cache between the xdist worker that built it and the
controller that prints the summary).
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO

TOOL_CANDIDATES = [REPO.parent / "shared" / "tools" / "local-docker.sh", Path("/work/shared/tools/local-docker.sh")]
TAG = "gpt:test"
CACHE_KEY = "gpt/docker-image"
_facts: dict = {}
_session_start = time.time()


@dataclass
class Docker:
    env: dict
    base: str

    def run(self, args: list[str], timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc

    def popen(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(["docker", *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


def _tool() -> Path | None:
    return next((p for p in TOOL_CANDIDATES if p.is_file()), None)


@pytest.fixture(scope="session")
def docker():
    tool = _tool()
    if tool is None:
        pytest.skip(f"Docker cannot start: local-docker.sh not found in {', '.join(map(str, TOOL_CANDIDATES))}")
    if os.geteuid() != 0:
        pytest.skip("Docker cannot start: local-docker.sh runs dockerd as root and this is not root")
    env = dict(os.environ)
    env_line = subprocess.run(["bash", str(tool), "env"], capture_output=True, text=True, timeout=60).stdout
    for word in env_line.replace("export ", "").split():  # export DOCKER_HOST=... GPT_DOCKER_BASE=...
        key, _, value = word.partition("=")
        env[key] = value
    was_up = subprocess.run(["bash", str(tool), "status"], env=env, capture_output=True, timeout=60).returncode == 0
    t0 = time.monotonic()
    start = subprocess.run(["bash", str(tool), "start"], env=env, capture_output=True, text=True, timeout=1500)
    _facts["engine_s"] = time.monotonic() - t0
    if start.returncode != 0:
        tail = " | ".join((start.stdout + start.stderr).strip().splitlines()[-3:])
        pytest.skip(f"Docker cannot start here: {tail}")
    try:
        yield Docker(env=env, base=env["GPT_DOCKER_BASE"])
    finally:
        if not was_up:  # leave an engine someone else started running
            subprocess.run(["bash", str(tool), "stop"], env=env, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def image(docker, request) -> str:
    """docker/Dockerfile built from the repository root against the stand-in base."""
    t0 = time.monotonic()
    build = docker.run(["build", "--network", "host", "-f", "docker/Dockerfile", "--build-arg", f"BASE={docker.base}",
                        "-t", TAG, str(REPO)], timeout=1800)
    _facts["build_s"] = time.monotonic() - t0
    _facts["cached"] = (build.stdout.count("Using cache"), build.stdout.count("\nStep "))
    size = int(docker.run(["image", "inspect", TAG, "--format", "{{.Size}}"]).stdout)
    base = int(docker.run(["image", "inspect", docker.base, "--format", "{{.Size}}"]).stdout)
    _facts["size"], _facts["base_size"], _facts["at"] = size, base, time.time()
    if getattr(request.config, "cache", None) is not None:  # absent under -p no:cacheprovider
        request.config.cache.set(CACHE_KEY, _facts)
    return TAG


def pytest_terminal_summary(terminalreporter, config):
    cache = getattr(config, "cache", None)
    facts = (cache.get(CACHE_KEY, None) if cache is not None else dict(_facts)) or {}
    if facts.get("at", 0) >= _session_start:  # built in this session (by this process or an xdist worker)
        _facts.update(facts)
        how = "{} of {} steps from the layer cache".format(*_facts["cached"])
        terminalreporter.write_line(
            f"docker image {TAG}: built in {_facts['build_s']:.0f} s ({how}); {_facts['size'] / 1e9:.2f} GB "
            f"({(_facts['size'] - _facts['base_size']) / 1e9:.2f} GB over the base {_facts['base_size'] / 1e9:.2f} GB); "
            f"engine start {_facts['engine_s']:.0f} s")
