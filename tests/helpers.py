"""Test helpers: run entry points as a user would (fresh processes, torchrun), read metrics."""

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
# sitecustomize.py there checks, in every process started below, that gpt/'s collectives go through
# gpt/parallel/collectives.py with tensors on its device (tests/guard/collective_guard.py).
GUARD = REPO / "tests" / "guard"
GUARD_MARKER = "collective guard:"
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
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), str(REPO), env.get("PYTHONPATH", "")])
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
               env: dict | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m module args` in a fresh process (what a user types); `preexec_fn` runs in the child
    before it starts (e.g. to set resource limits)."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or env_for_subprocess(), cwd=REPO, preexec_fn=preexec_fn)
    assert_guard_silent(proc)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def torchrun(nproc: int, module: str, args: list[str], *, check: bool = True, timeout: int = 600,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m module args` (gloo on CPU, a free port)."""
    torchrun_bin = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    proc = subprocess.run([torchrun_bin, "--standalone", f"--nproc_per_node={nproc}", "-m", module, *args],
                          capture_output=True, text=True, timeout=timeout, env=env or env_for_subprocess(), cwd=REPO)
    assert_guard_silent(proc)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def assert_guard_silent(proc: subprocess.CompletedProcess) -> None:
    """Fail on any collective the guard refused, even where the process went on (or was expected to fail)."""
    lines = [line for line in (proc.stderr or "").splitlines() if GUARD_MARKER in line]
    if lines:
        raise AssertionError("a collective broke the rule of gpt/parallel/collectives.py:\n" + "\n".join(lines[:5]))


def tagged_records(text: str, tag: str) -> list[dict]:
    """The JSON object after every `tag ` in `text` (processes sharing a pipe may run lines together)."""
    import json

    decoder = json.JSONDecoder()
    out, at = [], text.find(tag + " ")
    while at >= 0:
        record, end = decoder.raw_decode(text, at + len(tag) + 1)
        out.append(record)
        at = text.find(tag + " ", end)
    return out


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(per-step records, evaluation records) of run.dir/metrics.jsonl."""
    import json

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


_UNBLOCK = """
import os, sys, time
time.sleep(float(sys.argv[1]))
while True:
    for fifo in sys.argv[2:]:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader (yet)
            pass
    time.sleep(0.05)
"""


@contextmanager
def no_hang(*fifos, seconds: float = 20):
    """Fail (TimeoutError) instead of blocking forever on one of `fifos`: opening a FIFO for reading
    waits for a writer, and native code may block there holding the GIL and retrying on EINTR (no
    alarm or thread helps). After `seconds` a helper process opens each FIFO for writing, which lets
    a stuck reader through to EOF."""
    helper = subprocess.Popen([sys.executable, "-c", _UNBLOCK, str(seconds), *map(str, fifos)])
    started = time.monotonic()
    try:
        yield
    finally:
        helper.kill()
        helper.wait()
        if time.monotonic() - started >= seconds:
            raise TimeoutError(f"blocked on {', '.join(map(str, fifos))} for more than {seconds} s")


def early_stop(evals: list[dict], patience: int, min_delta: float = 0.0) -> tuple[int, int]:
    """(step of the best evaluation, step at which early stopping must stop) for these evaluation
    records, following the documented rule (an evaluation improves when val_loss < best - min_delta;
    stop after `patience` evaluations in a row without improvement). Raises if the rule never fires."""
    best = best_step = None
    without = 0
    for e in evals:
        if best is None or e["val_loss"] < best - min_delta:
            best, best_step, without = e["val_loss"], e["step"], 0
        else:
            without += 1
            if without >= patience:
                return best_step, e["step"]
    raise AssertionError(f"no {patience} evaluations in a row without improvement: {evals}")
