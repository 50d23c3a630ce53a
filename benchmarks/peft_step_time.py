"""What each PEFT method trains and costs, against full fine-tuning of the same model, in one process.

For `model=gpt2-124m` (default) builds four engines, exactly as gpt-finetune does (build_engine:
the DeepSpeed engine, our AdamW, the PEFT wrappers): peft=none (full fine-tuning, the baseline),
lora (rank 8 on attn.qkv, the preset), adapter (bottleneck 32), bitfit. Prints per method the
trainable parameters, their fraction, the gradient + optimizer-state bytes (ZeRO arithmetic, fp32:
4 + 8 bytes per trainable parameter), and the training step time, measured interleaved in rounds
(each round runs every method's steps back to back, the order rotating), as the ratio to full
fine-tuning in the same round. Synthetic token batches (the step time does not depend on the data).

    python benchmarks/peft_step_time.py [--steps 3 --rounds 4 --seq 128 --batch 2] [key=value overrides]
"""

import argparse
import statistics
import tempfile
import time

import torch

METHODS = ("none", "lora", "adapter", "bitfit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="steps per method per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2, help="global = micro batch size")
    ap.add_argument("--model", default="gpt2-124m")
    ap.add_argument("--vocab", type=int, default=50257, help="tokenizer vocabulary (GPT-2's)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from gpt.config import compose, validate_training
    from gpt.data import Batch
    from gpt.engine import memory
    from gpt.engine.engine import build_engine
    from gpt.model.build import model_shape
    from gpt.parallel import context as parallel

    tmp = tempfile.TemporaryDirectory()
    common = [f"model={args.model}", "checkpoint=unused", f"data.path={tmp.name}", f"run.dir={tmp.name}/run",
              f"train.seq_len={args.seq}", f"train.global_batch_size={args.batch}",
              f"train.micro_batch_size={args.batch}", "device=cpu", *args.overrides]
    cfgs = {m: compose("finetune", [*common, f"peft={m}"]) for m in METHODS}
    layout = validate_training(cfgs["none"], 1)
    shape = model_shape(cfgs["none"].model, args.vocab)
    ctx = parallel.initialize(layout, "cpu")
    engines = {m: build_engine(cfgs[m], ctx, shape) for m in METHODS}
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    batch = [Batch(tokens[:, :-1], tokens[:, 1:], torch.full((args.batch, args.seq), 1.0 / (args.batch * args.seq)))]

    def step(m):
        engines[m].set_lr(1e-5)
        engines[m].train_step(batch)

    print(f"threads={torch.get_num_threads()} model={cfgs['none'].model.name} seq={args.seq} batch={args.batch} (fp32, CPU, one process)")
    full = memory.estimate(cfgs["none"], shape, layout)
    print(f"{'method':>8} {'trainable':>12} {'of total':>12} {'fraction':>9} {'grads+Adam':>11} {'saved':>11}")
    for m in METHODS:
        c = engines[m].counts
        mem = memory.estimate(cfgs[m], shape, layout, c.busiest_rank_trainable)
        state = mem.gradients + mem.optimizer
        print(f"{m:>8} {c.trainable:>12,} {c.total:>12,} {100 * c.trainable / c.total:>8.3f}% "
              f"{memory.human_bytes(state):>11} {memory.human_bytes(full.gradients + full.optimizer - state):>11}")
    for m in METHODS:  # warm-up: allocator, Adam state
        step(m)
    ratios = {m: [] for m in METHODS}
    print(f"{'round':>5} " + " ".join(f"{m + ' ms':>12}" for m in METHODS) + "   ratios to none (full)")
    for r in range(args.rounds):
        order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
        times = {m: [] for m in METHODS}
        for m in order:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(m)
                times[m].append(time.perf_counter() - t0)
        med = {m: statistics.median(times[m]) for m in METHODS}
        for m in METHODS:
            ratios[m].append(med[m] / med["none"])
        print(f"{r:>5} " + " ".join(f"{med[m] * 1e3:>12.1f}" for m in METHODS) + "   "
              + " ".join(f"{m} {med[m] / med['none']:.3f}" for m in METHODS[1:]))
    print("median step time / full fine-tuning: " + ", ".join(
        f"{m} {statistics.median(ratios[m]):.3f} (min {min(ratios[m]):.3f}, max {max(ratios[m]):.3f})" for m in METHODS[1:]))
    parallel.destroy()
    tmp.cleanup()


if __name__ == "__main__":
    main()
