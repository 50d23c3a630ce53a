"""Peak memory of one training step of GPT-2 124M (seq 256, batch 4 by default), now and at a revision.

Each measurement is a fresh process running gpt-pretrain's per-step path (gpt.trainer.loop.train_step)
on the tree under test: two warm-up steps (Adam's state exists afterwards), then the peak resident
set size is reset (/proc/self/clear_refs) and one more step runs. Reported per tree and precision:

  between steps   resident memory before the measured step: weights, Adam state, the process itself;
  step peak       the largest resident size during the step;
  step            step peak - between steps: what the step itself adds (gradients, activations, the
                  logits and loss, optimizer temporaries): the part that grows with the batch.

glibc would keep freed blocks resident (and hide the step's true peak behind earlier ones); the
children run with MALLOC_MMAP_THRESHOLD_=65536, so every large tensor is its own mapping, returned
to the system when freed.

    python benchmarks/step_memory.py [--rev main] [--precision fp32,bf16] [--batch 4] [--seq 256]

--rev names a git revision to compare against ("today"); it is exported with `git archive` into a
temporary directory (the repository is only read).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(args) -> None:
    from gpt.config import compose, validate_training
    from gpt.data import read_metadata
    from gpt.model.build import model_shape
    from gpt.parallel import context as parallel
    from gpt.trainer import loop
    from gpt.trainer.session import open_session

    overrides = ["model=gpt2-124m", "model.vocab_size=50257", f"train.seq_len={args.seq}",
                 f"train.global_batch_size={args.batch}", f"train.micro_batch_size={args.batch}",
                 f"train.precision={args.precision}", f"data.path={args.data}", f"run.dir={args.run_dir}",
                 "logging.wandb.mode=disabled", "train.steps=100", "eval.every=0", "logging.every=0", *args.overrides]
    cfg = compose("pretrain", overrides)
    layout = validate_training(cfg)
    shape = model_shape(cfg.model, read_metadata(args.data)["tokenizer"]["vocab_size"])
    ctx = parallel.initialize(layout, "cpu")
    s = open_session(cfg, ctx, shape)
    read = getattr(loop, "read_steps", lambda s: None)  # older trees read every step inside train_step

    def step():
        if hasattr(loop, "fetch"):  # the loop reads a step's batches (prefetched) before agreeing on stopping
            batches, _, data_s = loop.fetch(s)
            loop.train_step(s, batches, data_s)
        else:
            loop.train_step(s)
        read(s)

    for _ in range(2):
        step()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    step()
    print(json.dumps({"between": before, "peak": _status("VmHWM")}))


def measure(tree: Path, precision: str, args, data: str, tmp: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--precision", precision,
           "--batch", str(args.batch), "--seq", str(args.seq), "--data", data,
           "--run-dir", str(tmp / f"run-{tree.name}-{precision}"), *args.overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"{tree} {precision} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", help="git revision to compare with (today's code)")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--data")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra gpt-pretrain overrides")
    args = ap.parse_args()
    if args.child:
        return child(args)
    tmp = Path(tempfile.mkdtemp(prefix="step_memory-"))
    trees = {"this tree": REPO}
    if args.rev:
        old = tmp / "rev"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {f"{args.rev}": old, **trees}
    shards = {}  # each tree reads the shards its own gpt-preprocess writes (the format has versions)
    for label, tree in trees.items():
        if args.data is not None:
            shards[label] = args.data
            continue
        sys.path.insert(0, str(REPO / "benchmarks"))
        from train_speed import SHAKESPEARE

        shards[label] = str(tmp / f"shards-{tree.name}")
        subprocess.run([sys.executable, "-m", "gpt.preprocess", f"input={SHAKESPEARE}", f"output={shards[label]}",
                        "tokenizer.kind=byte"], check=True, capture_output=True, cwd=tree,
                       env=dict(os.environ, PYTHONPATH=str(tree)))
    gib = 2**30
    print(f"GPT-2 124M training step, seq {args.seq}, batch {args.batch}, one process, CPU", flush=True)
    print(f"{'tree':<12} {'precision':<10} {'between steps':>14} {'step peak':>10} {'step':>8}")
    results = {}
    for precision in args.precision.split(","):
        for label, tree in trees.items():
            r = measure(tree, precision, args, shards[label], tmp)
            results[(label, precision)] = r
            print(f"{label:<12} {precision:<10} {r['between'] / gib:>12.2f} G {r['peak'] / gib:>8.2f} G "
                  f"{(r['peak'] - r['between']) / gib:>6.2f} G", flush=True)
        if args.rev:
            a, b = results[(args.rev, precision)], results[("this tree", precision)]
            print(f"{'':<12} {precision:<10} this tree / {args.rev}: step peak {b['peak'] / a['peak']:.2f}, "
                  f"step {(b['peak'] - b['between']) / (a['peak'] - a['between']):.2f}")


if __name__ == "__main__":
    main()
