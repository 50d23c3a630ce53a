"""Step time of each parallel layout, as a ratio to the one-process run measured right beside it.

    .venv/bin/python benchmarks/parallel_step_time.py [--rounds 2] [--steps 30] [--only tp2,dp2-zero1]

Runs gpt-pretrain (torchrun for several processes, gloo on CPU, OMP_NUM_THREADS=1) for every
layout of the parity matrix, interleaved with the one-process baseline: B L1 B L2 B ... Ln B. A
run's figure is the median step time after warm-up; a layout's ratio is taken against the mean of
the two baseline runs around it, so machine-speed drift (other jobs on a shared machine, thermal)
hits both alike; the median ratio over rounds is printed.

On a CPU the layouts share the same few cores, so ratios above 1 measure parallelism overhead
(communication, pipeline bubbles, recomputation), not speed-up; on GPUs run it with a bigger
model (`--model-args`) and expect the opposite. Numerical parity is the tests' job
(tests/engine/test_parity.py), not this script's.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

LAYOUTS = {
    # name: (processes, overrides) -- the parity matrix of tests/engine/test_parity.py
    "tp2": (2, ["parallel=tp2"]),
    "pp2-zero0-blocks1+2": (2, ["parallel=pp2", "parallel.zero_stage=0", "parallel.pipeline_layers=[1,2]"]),
    "pp2-zero1": (2, ["parallel=pp2"]),
    "dp2-zero0-accum4": (2, ["train.micro_batch_size=1"]),
    "dp2-zero1": (2, ["parallel=zero1"]),
    "dp2-zero2": (2, ["parallel=zero2"]),
    "dp2-zero3": (2, ["parallel=zero3"]),
    "tp2pp2": (4, ["parallel=tp2pp2"]),
    "tp2pp2-ckpt": (4, ["parallel=tp2pp2", "train.activation_checkpointing=true"]),
    "1proc-ckpt": (1, ["train.activation_checkpointing=true"]),
    "1proc-bf16": (1, ["train.precision=bf16"]),
}

MODEL = ["model=tiny", "model.n_layer=3", "model.n_embd=64", "model.n_head=4", "model.max_seq_len=64",
         "train.seq_len=32", "train.global_batch_size=8", "train.micro_batch_size=2"]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        e.pop(key, None)
    return e


def corpus_shards(work: Path) -> Path:
    out = work / "shards"
    text = next((p for p in (REPO.parent / "shared/data/tinyshakespeare.txt",
                             Path("/work/shared/data/tinyshakespeare.txt")) if p.is_file()), None)
    src = work / "corpus.txt"
    if text is not None:
        src.write_bytes(text.read_bytes()[:400_000])
    else:
        import sysconfig

        src.write_text(Path(sysconfig.get_paths()["stdlib"], "os.py").read_text() * 8)
    subprocess.run([sys.executable, "-m", "gpt.preprocess", f"input={src}", f"output={out}", "tokenizer.kind=byte"],
                   check=True, capture_output=True, env=env(), cwd=REPO)
    return out


def run(nproc: int, overrides: list[str], run_dir: Path, shards: Path, steps: int, model_args: list[str]) -> list[dict]:
    args = [f"data.path={shards}", f"run.dir={run_dir}", *MODEL, *model_args, f"train.steps={steps}",
            "optim.warmup_steps=2", "optim.lr=3e-3", "eval.every=0", "logging.wandb.mode=disabled", "logging.every=0",
            *overrides]
    cmd = ([sys.executable, "-m", "gpt.pretrain"] if nproc == 1 else
           [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "gpt.pretrain"])
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env(), cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd + args)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def median_step_time(rows: list[dict], warmup: int) -> float:
    return statistics.median(r["step_time_s"] for r in rows[warmup:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    p.add_argument("--only", default="", help="comma-separated layout names")
    p.add_argument("--model-args", default="", help="extra overrides, e.g. 'model.n_embd=256 train.seq_len=128'")
    a = p.parse_args()
    layouts = {k: v for k, v in LAYOUTS.items() if not a.only or k in a.only.split(",")}
    model_args = a.model_args.split()
    times = {k: [] for k in ["1proc", *layouts]}
    ratios = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory(prefix="gpt-bench-") as tmp:
        work = Path(tmp)
        shards = corpus_shards(work)

        def baseline(tag: str) -> float:
            t = median_step_time(run(1, [], work / f"base-{tag}", shards, a.steps, model_args), a.warmup)
            times["1proc"].append(t)
            return t

        for r in range(a.rounds):
            before = baseline(f"{r}-start")
            for name, (nproc, overrides) in layouts.items():
                t = median_step_time(run(nproc, overrides, work / f"{name}-{r}", shards, a.steps, model_args), a.warmup)
                after = baseline(f"{r}-{name}")
                ratio = t / ((before + after) / 2)
                times[name].append(t)
                ratios[name].append(ratio)
                print(f"round {r + 1}: {name:22s} {t * 1e3:7.1f} ms/step  x{ratio:.2f} "
                      f"(baseline {before * 1e3:.1f} / {after * 1e3:.1f} ms)", file=sys.stderr, flush=True)
                before = after
    print(f"\nmedian step time over {a.rounds} round(s) of {a.steps} steps (first {a.warmup} left out); ratio to "
          f"the one-process runs just before and after")
    print(f"{'layout':22s} {'procs':>5s} {'ms/step':>8s} {'ratio':>6s}")
    print(f"{'1proc (baseline)':22s} {1:5d} {statistics.median(times['1proc']) * 1e3:8.1f} {1.0:6.2f}")
    for name, (nproc, _) in layouts.items():
        print(f"{name:22s} {nproc:5d} {statistics.median(times[name]) * 1e3:8.1f} {statistics.median(ratios[name]):6.2f}")


if __name__ == "__main__":
    main()
