"""Activation memory of sequence and context parallelism, and the longest sequence that trains.

    python benchmarks/long_sequence_memory.py [--seq 2048] [--budget-gb 8] [--longest]

Part 1 (always): GPT-2 124M shapes (12 x 768, vocab 50257), one micro-batch of one sequence of --seq
tokens, fp32. For each layout, the bytes of activations each rank keeps for backward (every tensor
autograd saves during forward and loss, counted once per storage, parameters excluded: what activation
checkpointing or SP/CP can save) and the process's peak RSS after forward + backward. Ratios are
against the layout without the feature, in the same run:
  tensor 2 + sequence parallel vs tensor 2 (target <= 0.6), context 2 vs context 1 (target <= 0.6).

Part 2 (--longest): the longest power-of-two sequence (from 1024) for which one full training step
(gpt's engine: forward, backward, AdamW) of GPT-2 124M shapes succeeds with at most --budget-gb of
memory per rank (RLIMIT_DATA, so running out is a MemoryError, not the OOM killer), at context 1 and 2.

Every figure comes from real runs of gpt's model and engine (torchrun, gloo); the ranks of a layout
share this machine's cores, so times are not reported.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPT2_124M = ["model=gpt2-124m", "model.vocab_size=50257", "model.dropout=0.0"]
LAYOUTS = {  # name: (processes, overrides)
    "tensor 1": (1, []),
    "tensor 2": (2, ["parallel.tensor=2"]),
    "tensor 2 + SP": (2, ["parallel.tensor=2", "parallel.sequence_parallel=true"]),
    "tensor 4": (4, ["parallel.tensor=4"]),
    "tensor 4 + SP": (4, ["parallel.tensor=4", "parallel.sequence_parallel=true"]),
    "context 2": (2, ["parallel.context=2"]),
}
# (layout, against, target): the targets are at tensor 2 and context 2; tensor 4 shows how
# sequence parallelism's share grows with the tensor size (Megatron's 34/t vs 10 + 24/t per token).
RATIOS = [("tensor 2 + SP", "tensor 2", 0.6), ("tensor 4 + SP", "tensor 4", 0.6), ("context 2", "tensor 1", 0.6)]


def worker(mode: str, seq: int, overrides: list[str]) -> dict:
    """One rank: build gpt's engine for the config, run one micro-batch, report this rank's figures."""
    import torch

    from gpt.config import compose
    from gpt.config.validate import validate_training
    from gpt.data import Batch
    from gpt.engine.engine import build_engine
    from gpt.model.build import model_shape
    from gpt.parallel import context as parallel

    cfg = compose("pretrain", [*GPT2_124M, f"model.max_seq_len={seq}", f"train.seq_len={seq}",
                               "train.micro_batch_size=1", "device=cpu", *overrides])
    cfg.train.global_batch_size = cfg.train.micro_batch_size * int(os.environ.get("WORLD_SIZE", "1")) // (
        cfg.parallel.tensor * cfg.parallel.pipeline * cfg.parallel.context)
    layout = validate_training(cfg)
    shape = model_shape(cfg.model, None)
    ctx = parallel.initialize(layout, "cpu")
    engine = build_engine(cfg, ctx, shape)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (1, seq + 1), generator=g)
    batch = Batch(tokens[:, :-1], tokens[:, 1:], torch.full((1, seq), 1.0 / seq))
    out = {"rank": ctx.rank}
    if mode == "activations":
        params = {p.untyped_storage().data_ptr() for p in engine.module.parameters()}
        # The fused head + loss computes the head weight's gradient in the forward and keeps it for
        # backward: a saved tensor of the (vocabulary slice x hidden) weight's shape, the same size
        # whatever the sequence length (backward would allocate it anyway). Counted, and also shown apart.
        head_shapes = {tuple(p.shape) for n, p in engine.module.named_parameters()
                       if p.dim() == 2 and p.shape[0] * cfg.parallel.tensor >= 50257}
        seen: dict[int, int] = {}
        weight_shaped: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
                if tuple(t.shape) in head_shapes:
                    weight_shaped[ptr] = seen[ptr]
            return t

        b = engine.local_batch(batch)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = engine.module(b.tokens, labels=b.labels, weights=b.weights)
        loss.backward()
        out["activation_bytes"] = sum(seen.values())
        out["head_gradient_bytes"] = sum(weight_shaped.values())
    else:
        engine.set_lr(1e-4)
        engine.train_step([batch])
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    parallel.destroy()
    return out


def launch(mode: str, seq: int, nproc: int, overrides: list[str], budget_gb: float | None = None) -> list[dict] | None:
    """Run the worker on nproc ranks; None if it failed (e.g. out of memory under the budget)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // nproc))))
    if budget_gb:
        env["GPT_BENCH_BUDGET_GB"] = str(budget_gb)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", f"--nproc_per_node={nproc}", __file__, "--worker", mode, "--seq", str(seq),
           "--", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return rows if proc.returncode == 0 and len(rows) == nproc else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--longest", action="store_true", help="also search the longest sequence that trains")
    ap.add_argument("--budget-gb", type=float, default=8.0)
    ap.add_argument("--max-seq", type=int, default=65536)
    ap.add_argument("--worker", choices=["activations", "step"])
    args, rest = ap.parse_known_args()
    overrides = [a for a in rest if a != "--"]
    if args.worker:
        budget = os.environ.get("GPT_BENCH_BUDGET_GB")
        if budget:
            limit = int(float(budget) * 2**30)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        print("RESULT " + json.dumps(worker(args.worker, args.seq, overrides)), flush=True)
        return

    print(f"GPT-2 124M shapes, one sequence of {args.seq} tokens, fp32; per rank (the busiest):")
    print(f"{'layout':<16} {'ranks':>5} {'activations MiB':>16} {'of which head grad':>19} {'per token MiB':>14} "
          f"{'peak RSS MiB':>13}")
    figures, per_token = {}, {}
    for name, (nproc, over) in LAYOUTS.items():
        rows = launch("activations", args.seq, nproc, over)
        if rows is None:
            print(f"{name:<16} {nproc:>5} {'failed':>16}")
            continue
        busiest = max(rows, key=lambda r: r["activation_bytes"])
        act, head, rss = busiest["activation_bytes"], busiest["head_gradient_bytes"], max(r["peak_rss_bytes"] for r in rows)
        figures[name] = act
        per_token[name] = act - head
        print(f"{name:<16} {nproc:>5} {act / 2**20:>16.1f} {head / 2**20:>19.1f} {(act - head) / 2**20:>14.1f} "
              f"{rss / 2**20:>13.0f}", flush=True)
    print()
    for a, b, target in RATIOS:
        if a in figures and b in figures:
            ratio = figures[a] / figures[b]
            print(f"activations {a} / {b}: {ratio:.2f} (target <= {target}) {'ok' if ratio <= target else 'MISSED'}; "
                  f"without the head's fixed gradient: {per_token[a] / per_token[b]:.2f}")

    if args.longest:
        print(f"\nLongest sequence whose training step fits {args.budget_gb:g} GB per rank (GPT-2 124M shapes):")
        for name, nproc, over in (("context 1", 1, []), ("context 2", 2, ["parallel.context=2"])):
            best, seq = None, 1024
            while seq <= args.max_seq:
                if launch("step", seq, nproc, over, args.budget_gb) is None:
                    break
                best, seq = seq, seq * 2
            print(f"  {name}: {best if best else '< 1024'} tokens (next: {seq if seq <= args.max_seq else '-'} failed)",
                  flush=True)


if __name__ == "__main__":
    main()
