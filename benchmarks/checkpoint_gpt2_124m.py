"""Checkpoint save and load for the gpt2-124m preset, one process, against torch.distributed.checkpoint.

    flock /tmp/gpt-heavy.lock .venv/bin/python benchmarks/checkpoint_gpt2_124m.py [--dir DIR] [--zero 0] [--rounds 3]

Builds the real engine (DeepSpeed, fp32, Adam state created by real steps on random tokens), then,
in interleaved rounds on the same state (the tensors this rank holds: weights and both Adam
moments, ~1.5 GB):

- ours, synchronous (`checkpoint.async_save=false`): the time training waits for the save;
- ours, asynchronous: the training stall (the time `save()` takes before training goes on: copying
  this rank's share to host memory) and the total (until the checkpoint is published), the first
  save of a run (host buffers allocated) and a later one (buffers reused);
- `torch.distributed.checkpoint.save` and `async_save` of exactly the same tensors (DCP's
  FileSystemWriter, its default staging, and a stager kept between saves as ours keeps buffers);
- the slowdown of training steps that run while an asynchronous save is being written.

Then a resume into a fresh engine (selection with sha256 verification, the materialising step,
reading and setting every slice). Medians over the rounds; ratios against the synchronous save.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--zero", type=int, default=0, help="parallel.zero_stage (one process)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every kind of save")
    ap.add_argument("--train-steps", type=int, default=3, help="training steps timed with and without a save in flight")
    args = ap.parse_args()

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    from gpt import log
    from gpt.checkpoint import format as fmt
    from gpt.checkpoint.load import load, select
    from gpt.checkpoint.save import Checkpointer
    from gpt.config.loader import compose
    from gpt.config.validate import validate_training
    from gpt.data.loader import Batch
    from gpt.data.tokenizer import ByteTokenizer
    from gpt.engine.engine import build_engine
    from gpt.model.build import model_shape
    from gpt.parallel import context

    log.setup(0)
    root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    cfg = compose("pretrain", ["model=gpt2-124m", "model.vocab_size=50257", f"parallel.zero_stage={args.zero}",
                               "train.seq_len=64", "train.global_batch_size=1", "train.micro_batch_size=1",
                               f"run.dir={root / 'run'}", "device=cpu", "logging.wandb.mode=disabled"])
    layout = validate_training(cfg, world_size=1)
    ctx = context.initialize(layout, "cpu")
    shape = model_shape(cfg.model, 50257)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (1, 65), generator=gen)
    batch = [Batch(tokens[:, :-1], tokens[:, 1:], torch.full((1, 64), 1 / 64))]

    engine = build_engine(cfg, ctx, shape)
    engine.set_lr(1e-4)
    for _ in range(2):
        engine.train_step(batch)  # creates the Adam state the checkpoint holds
    cdict = {"model": {}, "train": {"seed": cfg.train.seed}, "parallel": {"zero_stage": args.zero}}
    run_dir = root / "run"
    step = [0]

    def ours(checkpointer):
        step[0] += 1
        t0 = time.perf_counter()
        checkpointer.save(step=step[0], trainer_state={"step": step[0]}, config=cdict, tokenizer=ByteTokenizer(),
                          run_dir=run_dir, keep_last=1)
        stall = time.perf_counter() - t0
        checkpointer.wait()
        return stall, time.perf_counter() - t0

    share, _, _ = Checkpointer(engine)._share()  # the very tensors our save writes
    state = {k: v for k, v in share.items() if not k.startswith("__rng__")}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    kept_stager = DefaultStager(StagingOptions(False, False, False, False))

    def dcp_save(kind):
        out = root / "dcp"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        if kind == "sync":
            dcp.save(state, checkpoint_id=str(out))
            stall = time.perf_counter() - t0
        else:
            future = dcp.async_save(state, checkpoint_id=str(out),
                                    **({"async_stager": kept_stager} if kind == "async_kept" else {}))
            stall = time.perf_counter() - t0
            future.result()
        return stall, time.perf_counter() - t0

    async_ckpt = Checkpointer(engine, asynchronous=True)
    results: dict[str, list[tuple[float, float]]] = {}
    first = ours(async_ckpt)  # the run's first asynchronous save: its host buffers are allocated here
    for _ in range(args.rounds):
        for name, fn in (("ours sync", lambda: ours(Checkpointer(engine, asynchronous=False))),
                         ("dcp.save", lambda: dcp_save("sync")),
                         ("ours async", lambda: ours(async_ckpt)),
                         ("dcp.async_save", lambda: dcp_save("async")),
                         ("dcp.async_save, kept stager", lambda: dcp_save("async_kept"))):
            results.setdefault(name, []).append(fn())

    # Training steps with an asynchronous save being written, against the same steps without.
    def steps():
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            engine.train_step(batch)
        return time.perf_counter() - t0

    plain, during = [], []
    for _ in range(args.rounds):
        plain.append(steps())
        step[0] += 1
        t0 = time.perf_counter()
        async_ckpt.save(step=step[0], trainer_state={"step": step[0]}, config=cdict, tokenizer=ByteTokenizer(),
                        run_dir=run_dir, keep_last=1)
        during.append(time.perf_counter() - t0 + steps())
        async_ckpt.wait()
    async_ckpt.close()
    shutil.rmtree(root / "dcp", ignore_errors=True)

    params = sum(p.numel() for _, p in engine.named_parameters())
    del engine, share, state
    fresh = build_engine(cfg, ctx, shape)
    t0 = time.perf_counter()
    chosen, meta = select(run_dir, ctx, fallback=False, verify=True)
    t_select = time.perf_counter() - t0
    t_mat = {}

    def materialize():
        t = time.perf_counter()
        fresh.set_lr(0.0)
        fresh.train_step([Batch(b.tokens, b.labels, b.weights * 0.0) for b in batch])
        t_mat["s"] = time.perf_counter() - t

    t0 = time.perf_counter()
    load(fresh, chosen, meta=meta, materialize=materialize)
    t_load = time.perf_counter() - t0

    med = {k: (statistics.median(s for s, _ in v), statistics.median(t for _, t in v)) for k, v in results.items()}
    sync = med["ours sync"][1]
    mb = nbytes / 1e6
    print(f"gpt2-124m, one CPU process, ZeRO {args.zero}: {params / 1e6:.1f}M parameters, fp32 weights + Adam "
          f"moments = {mb:.0f} MB; medians of {args.rounds} interleaved rounds")
    print(f"{'save':32s} {'stall s':>9s} {'total s':>9s} {'stall/sync':>11s} {'total/sync':>11s}")
    rows = [("ours sync", *med["ours sync"]), ("ours async, first of a run", *first)]
    rows += [(k, *v) for k, v in med.items() if k != "ours sync"]
    for name, stall, total in rows:
        print(f"{name:32s} {stall:9.2f} {total:9.2f} {stall / sync:11.3f} {total / sync:11.2f}")
    print(f"target: ours async stall / ours sync <= 0.10 (measured {med['ours async'][0] / sync:.3f}); ours no slower "
          f"than DCP: stall {med['ours async'][0]:.2f} vs {min(med['dcp.async_save'][0], med['dcp.async_save, kept stager'][0]):.2f} s, "
          f"total {med['ours async'][1]:.2f} vs {min(med['dcp.async_save'][1], med['dcp.async_save, kept stager'][1]):.2f} s "
          f"(sync {sync:.2f} vs {med['dcp.save'][1]:.2f} s)")
    p, d = statistics.median(plain), statistics.median(during)
    print(f"{args.train_steps} training steps: {p:.2f} s alone, {d:.2f} s with an async save started before them "
          f"(+{d - p:.2f} s = {(d - p) / sync:.2f} x a synchronous save)")
    print(f"load (resume)        {t_select + t_load:9.2f} s   {mb / (t_select + t_load):7.0f} MB/s")
    print(f"  verify (sha256)    {t_select:9.2f} s")
    print(f"  materialise step   {t_mat.get('s', 0.0):9.2f} s   (creates Adam state: one step at lr 0)")
    print(f"  read + set slices  {t_load - t_mat.get('s', 0.0):9.2f} s")
    context.destroy()
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert fmt.VERSION == meta["version"]


if __name__ == "__main__":
    main()
