"""gpt's training step against the plain PyTorch loop it replaces: tokens/s, MFU, loss curve, compile time.

Every side trains its own copy of the same model from the same initial weights on the same batches
(gpt's loader, step k = samples [k*batch, (k+1)*batch)) with the same schedule, clipping and AdamW
settings, all in this one process, interleaved step by step in rotating order so that the machine's
drifts and bursts of load hit every side alike. Ratios are medians of per-step ratios against the
baseline side (first of --sides, default the eager plain loop).

  plain...   benchmarks/plain_gpt.py: nn.Linear / nn.LayerNorm / SDPA / F.cross_entropy, torch AdamW,
             forward-backward-clip-step on batches already in memory (nanoGPT's train.py loop; AdamW
             fused on CUDA only, as nanoGPT); -compile: torch.compile of the model; -fused: fused AdamW
             on CPU too; -bf16: torch.autocast(bf16) around the forward.
  gpt...     gpt-pretrain's per-step path (gpt.trainer.loop: prefetched batches from the memory-mapped
             shards, the DeepSpeed engine, the LR schedule, metrics read every logging.every steps,
             the stop agreement) with train.compile / train.precision=bf16 as named;
             gpt-bf16-engine: DeepSpeed's bf16 engine (train.autocast=false).

The first step of each side (torch.compile's cold compile included: the inductor cache starts empty
unless --warm-cache) is reported separately and excluded from the medians.

    python benchmarks/train_speed.py nanogpt [--steps 30 --rounds 3]
    python benchmarks/train_speed.py gpt2-124m --sides plain-compile-bf16,gpt-compile-bf16,gpt-bf16
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = next((p for p in (REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
                                 REPO.parents[1] / "shared" / "data" / "tinyshakespeare.txt") if p.is_file()),
                   REPO.parent / "shared" / "data" / "tinyshakespeare.txt")

CONFIGS = {
    # nanoGPT's documented CPU run (README: shakespeare_char on a MacBook / CPU): 4 layers, 4 heads,
    # 128 wide, block 64, batch 12, dropout 0, lr 1e-3, beta2 0.99. Biases off and the vocabulary
    # unpadded (vocab_multiple=1) so both sides hold exactly the same model.
    "nanogpt": (["experiment=shakespeare_char", "model.bias=false", "model.vocab_multiple=1", "model.max_seq_len=64"],
                "plain,plain-compile,gpt,gpt-compile"),
    # GPT-2 124M shapes at seq 256, batch 4; the byte shards' ids are a subset of the 50257 vocabulary
    # (padded to 50304 on both sides).
    "gpt2-124m": (["model=gpt2-124m", "model.vocab_size=50257", "train.seq_len=256", "train.global_batch_size=4",
                   "train.micro_batch_size=4", "optim.lr=6e-4", "optim.min_lr=6e-5", "optim.warmup_steps=10"],
                  "plain-compile-bf16,gpt-compile-bf16"),
    # make gpu-check's shapes: GPT-2 124M at GPT-2's context, Llama 3.2 1B (tied, GQA 32/8, SwiGLU 8192)
    "gpt2-124m-gpu": (["model=gpt2-124m", "model.vocab_size=50257", "train.seq_len=1024", "train.global_batch_size=16",
                       "train.micro_batch_size=16", "optim.warmup_steps=10"], "plain-compile-bf16,gpt-compile-bf16"),
    "llama-1b": (["model=llama-1b", "model.vocab_size=128256", "model.max_seq_len=2048", "train.seq_len=2048",
                  "train.global_batch_size=4", "train.micro_batch_size=4", "optim.lr=3e-4", "optim.min_lr=3e-5",
                  "optim.warmup_steps=10"], "plain-compile-bf16,gpt-compile-bf16"),
    # make gpu-check --dry-run: the same code on a CPU in seconds
    "tiny": (["model=tiny", "model.n_layer=2", "model.n_embd=64", "model.max_seq_len=32", "model.vocab_multiple=1",
              "train.seq_len=32",
              "train.global_batch_size=4", "train.micro_batch_size=4", "optim.warmup_steps=2"], "plain,gpt"),
}
GPT_SIDES = {"gpt": ["train.compile=false"], "gpt-compile": ["train.compile=true"],
             "gpt-bf16": ["train.precision=bf16", "train.compile=false"],
             "gpt-compile-bf16": ["train.precision=bf16", "train.compile=true"],
             "gpt-bf16-engine": ["train.precision=bf16", "train.autocast=false", "train.compile=false"]}
PLAIN_SIDES = {"plain": {}, "plain-compile": dict(compile=True), "plain-fused": dict(fused=True),
               "plain-compile-fused": dict(compile=True, fused=True), "plain-bf16": dict(autocast=torch.bfloat16),
               "plain-compile-bf16": dict(compile=True, autocast=torch.bfloat16)}


def corpus(tmp: Path) -> Path:
    """tiny shakespeare beside the repository, else ~1 MB of this Python's own sources (a clone elsewhere)."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE
    import sysconfig

    out = tmp / "corpus.txt"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out.write_text("\n".join(p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:80]))
    return out


def shards(tmp: Path) -> str:
    out = tmp / "shards"
    subprocess.run([sys.executable, "-m", "gpt.preprocess", f"input={corpus(tmp)}", f"output={out}",
                    "tokenizer.kind=byte"], check=True, capture_output=True, cwd=REPO)
    return str(out)


class GptSide:
    """gpt-pretrain's per-step path on one session (see gpt.trainer.loop.train)."""

    def __init__(self, cfg, ctx, shape):
        from gpt.trainer.session import open_session
        from gpt.trainer.signals import StopRequest

        self.session = open_session(cfg, ctx, shape)
        self.stop = StopRequest()
        self.losses = {}

    def initial_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.session.engine.named_parameters()}

    def step(self, k: int) -> None:
        from gpt.trainer.loop import fetch, read_steps, reading_due, train_step

        s = self.session
        batches, _, data_s = fetch(s)
        train_step(s, batches, data_s)
        if reading_due(s, s.state.step):
            for r in read_steps(s):
                self.losses[r["step"]] = r["loss"]
        self.stop.agreed_with(s.ctx.device, False)

    def close(self):
        from gpt.trainer.loop import read_steps

        for r in read_steps(self.session):
            self.losses[r["step"]] = r["loss"]
        self.session.close()


class PlainSide:
    def __init__(self, cfg, shape, state, batches, device, **kw):
        from plain_gpt import from_config, load_from_gpt, make_step

        from gpt.engine.optim import lr_at

        self.model = from_config(cfg.model, shape.padded_vocab).to(device)
        load_from_gpt(self.model, state)
        o = cfg.optim
        self.fn = make_step(self.model, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                            grad_clip=o.grad_clip, **kw)
        self.lr = lambda step: lr_at(step, o, cfg.train.steps)
        self.batches, self.device, self.losses = batches, device, {}

    def step(self, k: int) -> None:
        b = self.batches(k)
        loss = self.fn(b.tokens.to(self.device), b.labels.to(self.device), self.lr(k + 1))
        self.losses[k + 1] = loss  # read at the end

    def close(self):
        self.losses = {k: float(v) for k, v in self.losses.items()}


@dataclass
class SideResult:
    step_s: float  # median seconds per step
    tokens_per_s: float
    mfu: float | None
    ratio: float  # median of paired (baseline time / this side's time)
    ratio_iqr: str
    first_step_s: float  # the first step (torch.compile's compile included)
    final_loss: float  # mean of the last 5 losses
    times: list


@dataclass
class Result:
    config: str
    header: str
    sides: dict  # name -> SideResult
    notes: list


def measure(config: str, names: list[str], *, steps: int, rounds: int, warmup: int, device: str, data: str,
            tmp: Path, overrides=()) -> Result:
    """Time `names` (the first is the baseline) on `config`, interleaved; see the module docstring."""
    from gpt.config import compose, validate_training
    from gpt.data import read_metadata
    from gpt.model.build import model_shape
    from gpt.model.gpt import flops_per_token
    from gpt.parallel import context as parallel
    from gpt.parallel.peak import device_peak

    base, _ = CONFIGS[config]
    common = [*base, f"data.path={data}", "logging.wandb.mode=disabled", "train.steps=100000", "eval.every=0",
              "checkpoint.every=0", "logging.every=10", f"device={device}", *overrides]
    cfg0 = compose("pretrain", [*common, f"run.dir={tmp}/{config}-ref"])
    layout = validate_training(cfg0)
    shape = model_shape(cfg0.model, read_metadata(data)["tokenizer"]["vocab_size"])
    ctx = parallel.initialize(layout, device)
    gbs, seq = cfg0.train.global_batch_size, cfg0.train.seq_len
    dev = torch.device(device)
    sides, state, loader = {}, None, None
    try:
        for name in [n for n in names if n in GPT_SIDES] + [n for n in names if n not in GPT_SIDES]:
            if name in GPT_SIDES:
                cfg = compose("pretrain", [*common, f"run.dir={tmp}/{config}-{name}", *GPT_SIDES[name]])
                sides[name] = GptSide(cfg, ctx, shape)
                state = state or sides[name].initial_state()
                loader = loader or sides[name].session.train_data
            elif name in PLAIN_SIDES:
                if state is None:  # no gpt side: take the initial weights from a throwaway session
                    probe = GptSide(compose("pretrain", [*common, f"run.dir={tmp}/{config}-probe"]), ctx, shape)
                    state, loader = probe.initial_state(), probe.session.train_data
                    probe.close()
                if cfg0.train.micro_batch_size != gbs:
                    raise SystemExit("the plain loop takes one micro-batch per step")
                sides[name] = PlainSide(cfg0, shape, state, lambda k: loader.global_batch(k * gbs)[0], dev,
                                        **PLAIN_SIDES[name])
            else:
                raise SystemExit(f"unknown side {name}; sides: {', '.join([*PLAIN_SIDES, *GPT_SIDES])}")
        sides = {n: sides[n] for n in names}
        state = None

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize()

        first = {}
        for name, side in sides.items():
            t0 = time.perf_counter()
            side.step(0)
            sync()
            first[name] = time.perf_counter() - t0
        k = 1
        for _ in range(warmup):
            for side in sides.values():
                side.step(k)
            k += 1
        sync()
        # CPU: step by step, so bursts of load hit every side; CUDA: windows of `steps` steps with
        # one synchronisation each (a sync per step would hide what asynchronous launching gains).
        window = steps if dev.type == "cuda" else 1
        times = {n: [] for n in sides}
        ratios = {n: [] for n in sides}
        order = list(sides)
        for _ in range(rounds * steps // window):
            took = {}
            for name in order:
                t0 = time.perf_counter()
                for j in range(window):
                    sides[name].step(k + j)
                sync()
                took[name] = (time.perf_counter() - t0) / window
                times[name].append(took[name])
            for name in sides:
                ratios[name].append(took[names[0]] / took[name])
            order = order[1:] + order[:1]
            k += window
        for side in sides.values():
            side.close()

        fpt = flops_per_token(cfg0.model, shape.vocab_size, shape.ffn_hidden, seq)
        peaks = {p: device_peak(ctx.device, p, cfg0.train.peak_flops)[0] for p in ("fp32", "bf16")}
        header = (f"{config}: {cfg0.model.n_layer} x {cfg0.model.n_embd}, seq {seq}, batch {gbs}, vocab "
                  f"{shape.vocab_size} (table {shape.padded_vocab}); {device}"
                  f"{' ' + torch.cuda.get_device_name(dev) if dev.type == 'cuda' else ''}, "
                  f"{torch.get_num_threads()} threads; {rounds} x {steps} steps per side; peak fp32 "
                  f"{peaks['fp32']:.3g}, bf16 {peaks['bf16']:.3g} FLOP/s")
        results, notes = {}, []
        for name in sides:
            med = statistics.median(times[name])
            tps = gbs * seq / med
            peak = peaks["bf16" if "bf16" in name else "fp32"]
            last = [v for _, v in sorted(sides[name].losses.items())][-5:]
            results[name] = SideResult(med, tps, tps * fpt / peak if peak else None, statistics.median(ratios[name]),
                                       _iqr(ratios[name]), first[name], statistics.mean(last), times[name])
        plain = [n for n in sides if n in PLAIN_SIDES]
        ours = [n for n in sides if n in GPT_SIDES]
        if plain and ours:  # best against best, from the paired step times
            bp = min(plain, key=lambda n: results[n].step_s)
            bg = min(ours, key=lambda n: results[n].step_s)
            paired = [a / b for a, b in zip(times[bp], times[bg])]
            notes.append(f"best gpt ({bg}) / best plain ({bp}) tokens/s: {statistics.median(paired):.3f} "
                         f"(IQR {_iqr(paired)})")
        ref = [n for n in plain if "bf16" not in n]
        mine = [n for n in ours if "bf16" not in n]
        if ref and mine:  # the loss curves of the fp32 sides, step by step
            a, b = sides[ref[0]].losses, sides[mine[0]].losses
            diffs = [abs(a[s] - b[s]) for s in sorted(set(a) & set(b))]
            notes.append(f"loss curves {ref[0]} vs {mine[0]} over {len(diffs)} steps: max |diff| {max(diffs):.2e}, "
                         f"mean {statistics.mean(diffs):.2e} (loss {a[1]:.3f} -> {a[max(a)]:.3f})")
        return Result(config, header, results, notes)
    finally:
        sides.clear()
        parallel.destroy()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def print_result(r: Result) -> None:
    base = next(iter(r.sides))
    print(f"\n{r.header}")
    print(f"{'side':<20} {'ms/step':>9} {'tokens/s':>10} {'MFU':>7} {'x ' + base:>24} {'first step s':>13} "
          f"{'final loss':>10}")
    for name, x in r.sides.items():
        mfu = f"{x.mfu:.1%}" if x.mfu is not None else "-"
        print(f"{name:<20} {x.step_s * 1e3:>9.1f} {x.tokens_per_s:>10,.0f} {mfu:>7} {x.ratio:>12.3f} "
              f"(IQR {x.ratio_iqr}) {x.first_step_s:>13.1f} {x.final_loss:>10.4f}")
    for note in r.notes:
        print(note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--sides", help="comma-separated; the first is the baseline of the ratios")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per side per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side after the first")
    ap.add_argument("--data", help="token shards (default: tiny shakespeare, byte-tokenised into a temp dir)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warm-cache", action="store_true", help="keep torch.compile's on-disk cache (no cold compile)")
    ap.add_argument("overrides", nargs="*", help="extra gpt-pretrain overrides for every side")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="train_speed-"))
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
    names = (args.sides or CONFIGS[args.config][1]).split(",")
    result = measure(args.config, names, steps=args.steps, rounds=args.rounds, warmup=args.warmup, device=args.device,
                     data=args.data or shards(tmp), tmp=tmp, overrides=args.overrides)
    print_result(result)


def _iqr(values) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}-{values[0]:.2f}"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.2f}-{q[2]:.2f}"


if __name__ == "__main__":
    main()
