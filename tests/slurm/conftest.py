"""A real SLURM for the `slurm` tier: two "nodes" on this host, started once per test session.

`local-slurm.sh` (in ../shared/tools beside the checkout) installs Debian's slurm and munge packages
the first time (about 20 s), then starts munged, slurmctld and one slurmd per node in about a
second. Everything lives under a pytest tmp dir; the controller's ports are picked free and the node
names are unique to this session, because other sessions run the same tests on the same machine
(the script adds those names to /etc/hosts and removes them on stop). Each node advertises fake
GPUs (placeholder GRES), so `--gpus-per-node=N` jobs get SLURM_GPUS_ON_NODE=N and the launcher's
"one rank per GPU" rule is exercised; the ranks themselves run on CPU (gloo).
The tests skip, saying why, only where SLURM cannot start (no script, not root, start failed).
"""

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import REPO, launch_env

TOOL_CANDIDATES = [REPO.parent / "shared" / "tools" / "local-slurm.sh", Path("/work/shared/tools/local-slurm.sh")]
NODES, CPUS, GPUS = 2, 4, 2
_timings: dict = {}


@dataclass
class LocalSlurm:
    tool: Path
    tool_env: dict
    conf: Path
    job_env: dict = field(default_factory=dict)
    """What a user's shell would hold at `sbatch` time (sbatch passes it on to the job)."""

    def sbatch(self, args: list[str], cwd: Path) -> str:
        proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=self.job_env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"sbatch {args} failed: {proc.stderr}"
        return proc.stdout.strip().split(";")[0]

    def wait(self, job: str, timeout: int = 600) -> str:
        """The job's final state line, e.g. 'job 3 COMPLETED ExitCode=0:0' (polls every 0.5 s)."""
        proc = subprocess.run(["bash", str(self.tool), "wait", job, str(timeout)], env=self.tool_env,
                              capture_output=True, text=True, timeout=timeout + 60)
        assert proc.returncode != 124, f"job {job} did not end within {timeout} s:\n{self.logs()}"
        return proc.stdout.strip().splitlines()[-1]

    def show(self, job: str) -> dict:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], env=self.job_env, capture_output=True,
                             text=True, timeout=60).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args], env=self.job_env, check=True, timeout=60)

    def logs(self) -> str:
        return subprocess.run(["bash", str(self.tool), "logs"], env=self.tool_env, capture_output=True,
                              text=True, timeout=60).stdout


def _tool() -> Path | None:
    return next((p for p in TOOL_CANDIDATES if p.is_file()), None)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    tool = _tool()
    if tool is None:
        pytest.skip(f"SLURM cannot start: local-slurm.sh not found in {', '.join(map(str, TOOL_CANDIDATES))}")
    if os.geteuid() != 0:
        pytest.skip("SLURM cannot start: local-slurm.sh runs munged/slurmd as root and this is not root")
    root = tmp_path_factory.mktemp("slurm")
    tool_env = {**os.environ, "SLURM_LOCAL_DIR": str(root / "cluster"), "SLURM_LOCAL_NODES": str(NODES),
                "SLURM_LOCAL_CPUS": str(CPUS), "SLURM_LOCAL_GPUS": str(GPUS), "SLURM_LOCAL_CTLD_PORT": "auto",
                "SLURM_LOCAL_NODE_PREFIX": f"gptl{os.getpid()}n", "SLURM_LOCAL_TIMEOUT": "120"}
    installed = all(_on_path(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
    t0 = time.monotonic()
    start = subprocess.run(["bash", str(tool), "start"], env=tool_env, capture_output=True, text=True, timeout=900)
    _timings["start_s"], _timings["installed_packages"] = time.monotonic() - t0, not installed
    if start.returncode != 0:
        subprocess.run(["bash", str(tool), "stop"], env=tool_env, capture_output=True, timeout=300)
        tail = " | ".join((start.stdout + start.stderr).strip().splitlines()[-3:])
        pytest.skip(f"SLURM cannot start here: {tail}")
    conf = root / "cluster" / "etc" / "slurm.conf"
    venv_bin = str(Path(sys.executable).parent)
    job_env = launch_env(SLURM_CONF=str(conf), PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    cluster = LocalSlurm(tool=tool, tool_env=tool_env, conf=conf, job_env=job_env)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(tool), "stop"], env=tool_env, capture_output=True, timeout=300)


def _on_path(binary: str) -> bool:
    return any(Path(d, binary).is_file() for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin"])


def pytest_terminal_summary(terminalreporter):
    if "start_s" in _timings:
        how = "including the package install" if _timings["installed_packages"] else "packages already installed"
        terminalreporter.write_line(f"local SLURM ({NODES} nodes): started in {_timings['start_s']:.1f} s ({how})")
