"""`make gpu-check`: everything that needs a GPU, in one script of at most 8 minutes on one H200.

1. the environment: device, torch and CUDA versions, what was installed from the carried wheels;
2. the `gpu`-marked tests (tests/gpu: bf16 against fp32, flash attention taken, compiled blocks
   against eager, no host synchronisation per step with fused AdamW, generation with the KV cache,
   an exact resume);
3. one table: tokens/s and MFU of gpt2-124m (seq 1024, batch 16) and llama-1b (seq 2048, batch 4)
   shapes on one GPU in bf16, gpt-pretrain's step against the plain PyTorch loop of the same shapes
   (benchmarks/train_speed.py; compiled and autocast on both sides).

Each part runs whatever time is left allows (a part that would overrun is reported as skipped), and a
failing part is reported without stopping the others; the exit status is 1 if anything failed.

--dry-run (what `make test` runs, tests/test_gpu_check.py): the same code on the CPU with tiny
shapes and two timed steps, the gpu tests only collected, so the script cannot rot unseen.

The GPU machine has Python 3.12, torch 2.11 and CUDA 13 but not DeepSpeed, megatron-core, Hydra or
OmegaConf: `make gpu-wheels` (here, where pip reaches the registry) puts them in .whl/, which travels
with the tree; `make gpu-check` installs them into /tmp/site first.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks that the script runs")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    args = ap.parse_args()
    t0 = time.perf_counter()
    failed = []

    def left() -> float:
        return args.budget - (time.perf_counter() - t0)

    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible (use --dry-run on a CPU)")
        return 1
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    print(f"gpu-check: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}",
          flush=True)

    # 2. the gpu tests (collected only in a dry run)
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
    if args.dry_run:
        pytest_args.append("--collect-only")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(pytest_args, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=max(30.0, left() * 0.5))
        tail = proc.stdout.strip().splitlines()[-15:]
        print("gpu tests:", *tail, sep="\n  ", flush=True)
        if proc.returncode != 0:
            failed.append("gpu tests")
            print(proc.stderr[-3000:])
    except subprocess.TimeoutExpired:
        failed.append("gpu tests (timed out)")
        print("gpu tests: timed out", flush=True)

    # 3. the table
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_speed

    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data = train_speed.shards(tmp)
    both = "plain-compile-bf16,gpt-compile-bf16"
    plan = [("tiny", "plain,gpt", 2)] if args.dry_run else [("gpt2-124m-gpu", both, 10), ("llama-1b", both, 5)]
    rows = []
    for config, sides, steps in plan:
        if left() < 60:
            print(f"{config}: skipped, {left():.0f} s left", flush=True)
            failed.append(f"{config} (no time left)")
            continue
        try:
            r = train_speed.measure(config, sides.split(","), steps=steps, rounds=2, warmup=1, device=device,
                                    data=data, tmp=tmp)
            train_speed.print_result(r)
            rows += [(config, side, x) for side, x in r.sides.items()]
        except Exception:  # report and go on with the next shapes
            failed.append(config)
            traceback.print_exc()
    print(f"\n{'shapes':<15} {'side':<20} {'tokens/s':>10} {'MFU':>7} {'x plain':>8} {'first step s':>13}")
    for config, side, x in rows:
        mfu = f"{x.mfu:.1%}" if x.mfu is not None else "-"
        print(f"{config:<15} {side:<20} {x.tokens_per_s:>10,.0f} {mfu:>7} {x.ratio:>8.3f} {x.first_step_s:>13.1f}")
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all passed"
    print(f"gpu-check: {time.perf_counter() - t0:.0f} s; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
