"""The end-to-end rows of the results table: `make demo`'s training and nanoGPT's shakespeare_char run.

Each experiment is run as a user runs it (`python -m gpt.pretrain experiment=...`, one process) into
a fresh run.dir under a temp dir, on shards made by gpt-preprocess there; prints wall time, the
median tokens/s of the step records and the validation losses of metrics.jsonl:

    python benchmarks/end_to_end.py [--only demo|shakespeare_char] [key=value overrides]

Takes ~3 + ~2 minutes on 2 CPU cores; run it on a quiet machine (the figures are absolute times).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
EXPERIMENTS = {  # name: (preprocess arguments, data key)
    "demo": (["input=stdlib", "tokenizer.kind=byte"], "data.path"),
    "shakespeare_char": ([f"input={SHAKESPEARE}", "tokenizer.kind=byte"], "data.path"),
}


def run(args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(EXPERIMENTS))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (prep, data_key) in EXPERIMENTS.items():
            if args.only and name != args.only:
                continue
            shards, run_dir = Path(tmp) / f"data-{name}", Path(tmp) / f"run-{name}"
            run(["-m", "gpt.preprocess", *prep, f"output={shards}"])
            wall = run(["-m", "gpt.pretrain", f"experiment={name}", f"{data_key}={shards}", f"run.dir={run_dir}",
                        "logging.wandb.mode=disabled", *args.overrides])
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in records if r.get("tokens_per_s")]
            evals = [r for r in records if "val_loss" in r]
            rows.append((name, wall, statistics.median(r["tokens_per_s"] for r in steps),
                         " -> ".join(f"{r['val_loss']:.3f} (step {r['step']})" for r in (evals[0], evals[-1]))))
    print(f"{'experiment':<18} {'wall':>9} {'tokens/s':>10}  val loss")
    for name, wall, tps, val in rows:
        print(f"{name:<18} {int(wall) // 60}m{wall % 60:04.1f}s {tps:>10,.0f}  {val}")


if __name__ == "__main__":
    main()
