"""Runs of gpt-pretrain shared by the engine tests: each distinct command runs once per session."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_module, torchrun
from parity import run_overrides


@dataclass
class Launched:
    run_dir: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def launch(shards, tmp_path_factory):
    """launch(nproc, arch, *overrides) -> Launched: the run of that command, started on first use."""
    done: dict[tuple, Launched] = {}

    def run(nproc: int, arch: str, *extra: str) -> Launched:
        key = (nproc, arch, extra)
        if key not in done:
            run_dir = tmp_path_factory.mktemp(f"{arch}-{nproc}") / "run"
            args = run_overrides(shards, run_dir, arch, *extra)
            proc = run_module("gpt.pretrain", args, check=True) if nproc == 1 else torchrun(nproc, "gpt.pretrain", args)
            done[key] = Launched(run_dir, proc)
        return done[key]

    return run
