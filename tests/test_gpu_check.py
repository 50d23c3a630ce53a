"""`make gpu-check` in its CPU dry-run mode: the GPU check's own code runs in every `make test`, so it
cannot rot while no GPU is at hand (tiny shapes, two timed steps, the gpu tests only collected)."""

import subprocess
import sys

from helpers import REPO, env_for_subprocess


def test_gpu_check_dry_run():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run"], cwd=REPO,
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "6 tests collected" in out  # every gpu test imports and is found
    assert "tiny            gpt " in out and "tiny            plain " in out  # the table has both sides
    assert out.strip().splitlines()[-1].endswith("all passed")
