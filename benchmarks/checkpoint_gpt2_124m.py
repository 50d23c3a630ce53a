"""Checkpoint save/load time and size for the gpt2-124m preset on CPU, one process.

    .venv/bin/python benchmarks/checkpoint_gpt2_124m.py [--dir DIR] [--zero 0]

Builds the real engine (DeepSpeed, fp32, Adam state created by one real step on random tokens),
then times `gpt.checkpoint.save` and a resume into a fresh engine (selection with sha256
verification, the materialising step, reading and setting every slice), and prints them beside a
baseline measured in the same run: writing the same tensors with one plain `safetensors.save_file`
(what any checkpoint has to pay for the bytes) and hashing them once.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--zero", type=int, default=0, help="parallel.zero_stage (one process)")
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    from gpt import log
    from gpt.checkpoint import format as fmt
    from gpt.checkpoint import zero_state
    from gpt.checkpoint.load import load, select
    from gpt.checkpoint.save import save
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
    t0 = time.perf_counter()
    engine.train_step(batch)  # creates the Adam state the checkpoint holds
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.train_step(batch)
    t_second = time.perf_counter() - t0
    cdict = {"model": {}, "train": {"seed": cfg.train.seed}, "parallel": {"zero_stage": args.zero}}
    t0 = time.perf_counter()
    ckpt = save(engine, step=1, trainer_state={"step": 1}, config=cdict, tokenizer=ByteTokenizer(), run_dir=root / "run")
    t_save = time.perf_counter() - t0
    meta = fmt.read_meta(ckpt)
    nbytes = sum(r["bytes"] for r in meta["files"].values())
    params = sum(p.numel() for _, p in engine.named_parameters())

    # Baseline: the same tensors, one plain safetensors write, then one sha256 pass.
    flat = {}
    for name, p in engine.named_parameters():
        flat[name] = zero_state.get_param(p).contiguous()
        for m in fmt.MOMENTS:
            flat[fmt.moment_key(name, m)] = zero_state.get_moment(engine.optimizer, p, m).contiguous()
    base = root / "baseline.safetensors"
    t0 = time.perf_counter()
    save_file(flat, str(base))
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    fmt.sha256(base)
    t_hash = time.perf_counter() - t0
    del flat, engine

    fresh = build_engine(cfg, ctx, shape)
    t0 = time.perf_counter()
    chosen, meta = select(root / "run", ctx, fallback=False, verify=True)
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

    mb = nbytes / 1e6
    print(f"gpt2-124m, one CPU process, ZeRO {args.zero}, fp32 weights + Adam moments ({params / 1e6:.1f}M parameters)")
    print(f"checkpoint size      {mb:9.1f} MB in {len(meta['files'])} file(s)  ({nbytes / params:.1f} bytes/parameter)")
    print(f"save                 {t_save:9.2f} s   {mb / t_save:7.0f} MB/s")
    print(f"  plain save_file    {t_plain:9.2f} s   (same tensors, no gather/fsync/hash)  save / plain = {t_save / t_plain:.2f}")
    print(f"  one sha256 pass    {t_hash:9.2f} s")
    print(f"load (resume)        {t_select + t_load:9.2f} s   {mb / (t_select + t_load):7.0f} MB/s")
    print(f"  verify (sha256)    {t_select:9.2f} s")
    print(f"  materialise step   {t_mat.get('s', 0.0):9.2f} s   (creates Adam state: one step at lr 0; the run's own "
          f"first step took {t_first:.2f} s, its second {t_second:.2f} s)")
    print(f"  read + set slices  {t_load - t_mat.get('s', 0.0):9.2f} s")
    context.destroy()
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
