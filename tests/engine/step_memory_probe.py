"""One rank of a real training run (build_engine + train_step on random tokens), reporting its
measured peak memory beside gpt-plan's estimate for it (tests/engine/test_plan.py runs it under
torchrun). Measured: the growth of this process's peak RSS (VmHWM, reset after the process groups
exist) over its RSS at that point, i.e. what the engine, the model and the steps added; on CPU that
is the memory the plan's figure describes (GPU runs would read torch.cuda.max_memory_allocated).

    torchrun --nproc_per_node=N -m tests.engine.step_memory_probe STEPS key=value ... [-- key=value ...]...

Each `--` group adds its overrides to the common ones and is measured in turn in this process (one
PROBE line per group, "group": its index), sharing the process start and the warm-up.
"""

import json
import os
import sys
from pathlib import Path


def kib(field: str) -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))


def main() -> None:
    import gc

    import torch

    from gpt.config import compose
    from gpt.config.validate import validate_training
    from gpt.data.loader import Batch
    from gpt.engine import memory
    from gpt.engine.engine import build_engine
    from gpt.model.build import model_shape
    from gpt.parallel import context

    steps, parts = int(sys.argv[1]), [[]]
    for arg in sys.argv[2:]:
        parts.append([]) if arg == "--" else parts[-1].append(arg)
    overrides, groups = parts[0], parts[1:] or [[]]
    layout = validate_training(compose("pretrain", ["device=cpu", "data.path=unused", *overrides, *groups[0]]))
    ctx = context.initialize(layout, "cpu")

    def run(cfg, shape, steps):
        engine = build_engine(cfg, ctx, shape)
        engine.set_lr(1e-4)
        gen = torch.Generator().manual_seed(ctx.dp_rank)
        micro, seq = cfg.train.micro_batch_size, cfg.train.seq_len
        for _ in range(steps):
            batches = []
            for _ in range(layout.grad_accum):
                tokens = torch.randint(0, shape.vocab_size, (micro, seq + 1), generator=gen)
                weights = torch.full((micro, seq), 1.0 / (micro * seq * layout.grad_accum))
                batches.append(Batch(tokens[:, :-1], tokens[:, 1:], weights))
            engine.train_step(batches)
        engine.ds.destroy()

    # The same layout once with a minute model first: the libraries' lazily loaded code and pools
    # (DeepSpeed's engine and optimizers, oneDNN, gloo) are then part of the baseline, not the step.
    small = compose("pretrain", ["device=cpu", "data.path=unused", *overrides, "model.n_embd=64", "model.n_head=4",
                                 "model.n_kv_head=null", "model.ffn_hidden=null", "model.vocab_size=256",
                                 "train.seq_len=8", "model.max_seq_len=8"])
    run(small, model_shape(small.model, 256), 1)

    for i, extra in enumerate(groups):
        cfg = compose("pretrain", ["device=cpu", "data.path=unused", *overrides, *extra])
        shape = model_shape(cfg.model, cfg.model.vocab_size)
        plan = memory.plan_ranks(cfg, shape, layout)[ctx.pp_rank]
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = kib("VmRSS")
        run(cfg, shape, steps)
        row = {"rank": ctx.rank, "stage": ctx.pp_rank, "group": i, "measured": (kib("VmHWM") - base) * 1024,
               "plan": plan.total, "model_states": plan.model_states, "buffers": plan.buffers,
               "activations": plan.activations}
        sys.stdout.flush()  # one write per line: the ranks share torchrun's stdout
        os.write(sys.stdout.fileno(), ("PROBE " + json.dumps(row) + "\n").encode())
    context.destroy()


if __name__ == "__main__":
    main()
