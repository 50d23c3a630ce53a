"""Test helpers: run entry points as a user would (fresh processes, torchrun), read metrics."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_CANDIDATES = [REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
                          Path("/work/shared/data/tinyshakespeare.txt")]

# Keys that keep every test run small, quiet and offline.
QUIET = ["logging.wandb.mode=disabled", "logging.every=0", "logging.tensorboard=false"]


def shakespeare_path() -> Path | None:
    return next((p for p in SHAKESPEARE_CANDIDATES if p.is_file()), None)


def tiny_overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A 2-layer model, 10 steps, global batch 8: seconds per run on one CPU core."""
    return [f"data.path={shards}", f"run.dir={run_dir}", "model=tiny", "model.n_layer=2", "model.n_embd=64",
            "model.n_head=4", "model.max_seq_len=64", "train.seq_len=32", "train.global_batch_size=8",
            "train.micro_batch_size=2", "train.steps=10", "optim.warmup_steps=2", "optim.lr=3e-3",
            "eval.every=5", "eval.iters=2", *QUIET, *extra]


def env_for_subprocess() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # several ranks share 2 cores: no thread oversubscription
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


# Variables that tell the launcher where it runs; tests set them explicitly (see launch_env).
LAUNCH_VARIABLES = ("SLURM_", "PET_", "GPT_NPROC_PER_NODE", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT",
                    "WORLD_SIZE", "RANK", "LOCAL_RANK")


def launch_env(**variables: str) -> dict:
    """env_for_subprocess() without anything that says where we run (SLURM, torchrun, GPUs), plus `variables`."""
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith(LAUNCH_VARIABLES)}
    env.update(variables)
    return env


def run_module(module: str, args: list[str], *, check: bool = False, timeout: int = 600,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` in a fresh process (what a user types)."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or env_for_subprocess(), cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def torchrun(nproc: int, module: str, args: list[str], *, check: bool = True, timeout: int = 600,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m module args` (gloo on CPU, a free port)."""
    torchrun_bin = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run([torchrun_bin, "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args],
                          capture_output=True, text=True, timeout=timeout, env=env or env_for_subprocess(), cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, evaluation records) of run.dir/metrics.jsonl."""
    import json

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]
