"""What the framework costs: gpt's training step vs a plain PyTorch loop of the same model and batch.

Both run in this one process, interleaved step by step (this machine's speed drifts by ~20% on its
own, so only paired ratios mean anything):
  plain: the same model in plain PyTorch layers (benchmarks/plain_gpt.py: nn.Linear, nn.LayerNorm,
         F.cross_entropy; gpt's initial weights copied in), torch.optim.AdamW, forward / backward /
         clip / step on batches that are already tensors in memory;
  gpt:   the real per-step path of gpt-pretrain (gpt.trainer.loop.train_step): the DeepSpeed engine,
         the memory-mapped data loader, the LR schedule, metrics.jsonl, plus the per-step signal
         agreement of the loop.
Prints, per round, the median step time of each and the median of the paired gpt/plain ratios,
then the median over rounds.

    python benchmarks/train_overhead.py [--steps 20 --rounds 6] [key=value overrides]
The default is the `make demo` model (4 layers, 128 wide, seq 128, batch 16) on shards of
tiny shakespeare (made in a temp dir if --data is not given).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_speed import SHAKESPEARE  # noqa: E402


def plain_loop(cfg, shape, state, batches):
    """The baseline: nothing but torch (one micro-batch per step, as the demo runs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_gpt import from_config, load_from_gpt, make_step

    model = from_config(cfg.model, shape.padded_vocab)
    load_from_gpt(model, state)
    o = cfg.optim
    fn = make_step(model, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay, grad_clip=o.grad_clip)

    def step(i):
        (b,) = batches[i % len(batches)]
        fn(b.tokens, b.labels)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="steps per side per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--data", help="token shards (default: tiny shakespeare, preprocessed into a temp dir)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from gpt.config import compose, validate_training
    from gpt.data import read_metadata
    from gpt.model.build import model_shape
    from gpt.parallel import context as parallel
    from gpt.trainer.loop import fetch, read_steps, reading_due, train_step
    from gpt.trainer.session import open_session
    from gpt.trainer.signals import StopRequest

    tmp = tempfile.TemporaryDirectory()
    data = args.data
    if data is None:
        data = str(Path(tmp.name) / "shards")
        subprocess.run([sys.executable, "-m", "gpt.preprocess", f"input={SHAKESPEARE}", f"output={data}"], check=True,
                       capture_output=True)
    cfg = compose("pretrain", ["experiment=demo", f"data.path={data}", f"run.dir={tmp.name}/run",
                               "logging.wandb.mode=disabled", "train.steps=100000", *args.overrides])
    layout = validate_training(cfg)
    shape = model_shape(cfg.model, read_metadata(data)["tokenizer"]["vocab_size"])
    ctx = parallel.initialize(layout, "cpu")
    session = open_session(cfg, ctx, shape)
    stop = StopRequest()
    batches = [session.train_data.global_batch(i * cfg.train.global_batch_size) for i in range(8)]
    state = {k: v.detach().clone() for k, v in session.engine.named_parameters()}
    plain_step = plain_loop(cfg, shape, state, batches)

    def gpt_step(i):  # the loop's per-step path (gpt.trainer.loop.train)
        batches, _, data_s = fetch(session)   # the loop reads the next step's batches, then agrees on stopping
        train_step(session, batches, data_s)
        if reading_due(session, session.state.step):
            read_steps(session)
        stop.agreed(ctx.device)

    for i in range(5):  # warm-up both
        plain_step(i)
        gpt_step(i)
    ratios = []
    print(f"threads={torch.get_num_threads()} model={cfg.model.name} layers={cfg.model.n_layer} "
          f"width={cfg.model.n_embd} seq={cfg.train.seq_len} batch={cfg.train.global_batch_size}")
    print(f"{'round':>5} {'plain ms/step':>14} {'gpt ms/step':>12} {'gpt/plain':>10}")
    for r in range(args.rounds):
        times = {"plain": [], "gpt": []}
        pairs = []
        for i in range(args.steps):  # step by step, alternating who goes first: bursts of load hit both
            order = [("plain", plain_step), ("gpt", gpt_step)] if i % 2 == 0 else [("gpt", gpt_step), ("plain", plain_step)]
            took = {}
            for name, fn in order:
                t0 = time.perf_counter()
                fn(i)
                took[name] = time.perf_counter() - t0
                times[name].append(took[name])
            pairs.append(took["gpt"] / took["plain"])
        p, g = statistics.median(times["plain"]), statistics.median(times["gpt"])
        ratios.append(statistics.median(pairs))
        print(f"{r:>5} {p * 1e3:>14.2f} {g * 1e3:>12.2f} {ratios[-1]:>10.3f}")
    print(f"median gpt/plain step-time ratio: {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.rounds} rounds")
    session.close()
    parallel.destroy()
    tmp.cleanup()


if __name__ == "__main__":
    main()
