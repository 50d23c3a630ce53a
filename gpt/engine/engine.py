"""The DeepSpeed engine behind one interface: a training step, a validation loss, parameters by name.

Two shapes share it: `DenseEngine` (pipeline size 1: the model is one module, ZeRO 0-3, gradient
accumulation through engine.backward/step) and `PipeEngine` (DeepSpeed's PipelineEngine, 1F1B over
stages). The trainer never needs to know which one it holds.
"""

import contextlib
import sys
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch

from gpt.config.training import TrainingConfig
from gpt.data import Batch
from gpt.engine.deepspeed_config import (deepspeed_config, deepspeed_zero_stage, uses_plain_optimizer,
                                         weight_precision)
from gpt.engine.optim import build_optimizer, global_grad_norm, set_lr
from gpt.engine.pipeline import build_pipeline, canonical_name
from gpt.model.build import ModelShape, build_model
from gpt.model.context_parallel import split_sequence
from gpt.model.gpt import Block
from gpt.model.slots import Slots
from gpt.parallel import collectives
from gpt.parallel.context import ParallelContext
from gpt.parallel.device import prepare_deepspeed
from gpt.parallel.rng import RNGTracker
from gpt.peft import apply_peft, trainable_counts


@dataclass(frozen=True)
class ParameterCounts:
    """What trains, counted over the whole model as one process holds it, and on the busiest rank."""

    trainable: int
    total: int
    busiest_rank_trainable: int  # for the memory estimate: gradients and optimizer state exist for these only


def count_parameters(module: torch.nn.Module, ctx: ParallelContext) -> ParameterCounts:
    """Collective over all ranks; call before DeepSpeed partitions anything."""
    counts = torch.tensor(trainable_counts(module.parameters(), ctx.tp_rank), dtype=torch.float64)
    collectives.all_reduce(counts, group=ctx.model_parallel_group)
    mine = torch.tensor([float(sum(p.numel() for p in module.parameters() if p.requires_grad))], dtype=torch.float64)
    collectives.all_reduce(mine, op="max")
    return ParameterCounts(int(counts[0]), int(counts[1]), int(mine[0]))


@dataclass(frozen=True)
class Zero3Partitioning:
    """How ZeRO-3 holds this rank's parameter tensors: split over the data ranks, or kept whole on
    every rank (DeepSpeed keeps tensors of at most stage3_param_persistence_threshold elements whole)."""

    partitioned: int
    total: int
    data: int
    threshold: int

    def describe(self) -> str:
        return (f"ZeRO-3 partitions {self.partitioned} of {self.total} parameter tensors over {self.data} data "
                f"rank(s); {self.total - self.partitioned} kept whole on every rank (those of at most "
                f"deepspeed.zero_optimization.stage3_param_persistence_threshold={self.threshold} elements)")


def zero3_partitioning(ds, data: int) -> Zero3Partitioning | None:
    """None unless DeepSpeed runs ZeRO stage 3; `ds_persist` marks the tensors it keeps whole."""
    if ds.zero_optimization_stage() != 3:
        return None
    params = [p for p in ds.module.parameters() if hasattr(p, "ds_id")]
    whole = sum(1 for p in params if getattr(p, "ds_persist", False))
    return Zero3Partitioning(len(params) - whole, len(params), data, int(ds.zero_param_persistence_threshold()))


@dataclass
class StepResult:
    """One optimizer step's figures as the engine left them: tensors still on the device where it can.

    Reading one is a host synchronisation, so the trainer collects a window of steps and reads them
    together with `TrainEngine.read` (one reduction over data ranks, one copy to the host).
    """

    loss: torch.Tensor  # () this data rank's share of the mean token loss (see read)
    grad_norm: torch.Tensor | float  # global gradient norm before clipping
    skipped: torch.Tensor | bool = False  # the optimizer did not apply this step (non-finite gradients, fp16 overflow)


@dataclass(frozen=True)
class StepFigures:
    """A StepResult read back: what metrics.jsonl records."""

    loss: float  # mean token loss of the global batch (all micro-batches, all data-parallel ranks)
    grad_norm: float
    skipped: bool


class TrainEngine:
    """What the trainer and checkpoints use; subclasses hold a DeepSpeed engine in `self.ds`."""

    def __init__(self, ds, ctx: ParallelContext, cfg: TrainingConfig, counts: "ParameterCounts", rng: RNGTracker):
        self.ds = ds
        self.ctx = ctx
        self.cfg = cfg
        self.counts = counts
        self.rng = rng  # the tensor-parallel random stream (checkpoints save and restore it)
        self.zero3 = zero3_partitioning(ds, ctx.layout.data)

    @property
    def optimizer(self):
        return self.ds.optimizer

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    def set_lr(self, lr: float) -> None:
        set_lr(self.ds.optimizer, lr)

    def named_parameters(self, *, replicas: bool = False) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """This rank's parameters under their one-process names, each once (tied copies skipped).

        replicas=True also yields a pipeline's second copy of tied weights (same name): loading must
        set it too, or the last stage would keep computing with its initial weights.
        """
        raise NotImplementedError

    def train_step(self, micro_batches: list[Batch]) -> StepResult:
        """Forward, backward and optimizer step over this rank's micro-batches; nothing is read back."""
        raise NotImplementedError

    def read(self, results: list[StepResult]) -> list[StepFigures]:
        """The figures of several steps at once: one host synchronisation (collective over data ranks)."""
        if not results:
            return []
        dev = self.ctx.device
        losses = torch.stack([torch.as_tensor(r.loss, dtype=torch.float32, device=dev) for r in results])
        losses = self._reduce_losses(losses)
        rest = torch.stack([torch.stack([torch.as_tensor(r.grad_norm, dtype=torch.float32, device=dev).reshape(()),
                                         torch.as_tensor(r.skipped, dtype=torch.float32, device=dev).reshape(())])
                            for r in results])
        values = torch.cat([losses[:, None], rest], dim=1).tolist()  # the one copy to the host
        return [StepFigures(loss, norm, bool(skipped)) for loss, norm, skipped in values]

    def _reduce_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return losses

    @torch.no_grad()
    def eval_loss(self, micro_batches: list[Batch]) -> float:
        raise NotImplementedError

    def _grad_norm(self) -> torch.Tensor | float:
        norm = self.ds.get_global_grad_norm()  # our optimizer's device tensor, or DeepSpeed's float
        return norm if norm is not None else float("nan")

    def _skipped(self) -> torch.Tensor | bool:
        """Our fp32 optimizer skips non-finite steps on the device (`skipped`); DeepSpeed's decide on the host."""
        flag = getattr(self.ds.optimizer, "skipped", None)
        return flag if flag is not None else not self.ds.was_step_applied()

    def _to_device(self, b: Batch) -> Batch:
        dev = self.ctx.device
        b = self.local_batch(b)
        return Batch(b.tokens.to(dev, non_blocking=True), b.labels.to(dev, non_blocking=True),
                     b.weights.to(dev, non_blocking=True))

    def local_batch(self, b: Batch) -> Batch:
        """This context rank's chunks of each sequence (context_parallel.py). Its loss weights are
        multiplied by the context size: DeepSpeed averages gradients over data x context ranks, and
        the chunks of one sample add up to its whole loss."""
        n, r = self.ctx.layout.context, self.ctx.cp_rank
        if n == 1:
            return b
        return Batch(split_sequence(b.tokens, r, n), split_sequence(b.labels, r, n), split_sequence(b.weights, r, n) * n)


class DenseEngine(TrainEngine):
    def named_parameters(self, *, replicas: bool = False):
        yield from self.ds.module.named_parameters()

    def _micro_loss(self, b: Batch) -> torch.Tensor:
        b = self._to_device(b)
        return self.ds(b.tokens, labels=b.labels, weights=b.weights)  # sum of weighted token losses

    def train_step(self, micro_batches):
        self.ds.train()
        total = torch.zeros((), device=self.ctx.device)
        for b in micro_batches:
            loss = self._micro_loss(b)
            self.ds.backward(loss)
            self.ds.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            total += loss.detach().float()
        return StepResult(loss=total / len(micro_batches), grad_norm=self._grad_norm(), skipped=self._skipped())

    def _reduce_losses(self, losses):
        return self._mean_over_dp(losses)

    @torch.no_grad()
    def eval_loss(self, micro_batches):
        self.ds.eval()
        total = torch.zeros((), device=self.ctx.device)
        for b in micro_batches:
            total += self._micro_loss(b).float()
        self.ds.train()
        return float(self._mean_over_dp(total / len(micro_batches)))

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, t) ids -> (b, t, v / tensor) this tensor rank's slice of the vocabulary's logits (eval mode).

        Every rank of the model's tensor group (and, under ZeRO-3, of its data group) must call it
        with the same tokens: the forward's collectives run over them.
        """
        self.ds.eval()
        try:
            return self.ds(tokens.to(self.ctx.device))
        finally:
            self.ds.train()

    def _mean_over_dp(self, value: torch.Tensor) -> torch.Tensor:
        n = self.ctx.layout.data_context  # context ranks hold partial losses of the same samples
        if n > 1:
            collectives.all_reduce(value, group=self.ctx.dp_cp_group)
            value = value / n
        return value


class PipeEngine(TrainEngine):
    def named_parameters(self, *, replicas: bool = False):
        n = self.cfg.model.n_layer
        for name, p in self.ds.module.named_parameters():
            if replicas or not getattr(p, "ds_pipe_replicated", False):
                yield canonical_name(name, n), p

    def _feed(self, micro_batches):
        return iter([(b.tokens, (b.labels, b.weights)) for b in map(self.local_batch, micro_batches)])

    def train_step(self, micro_batches):
        loss = self.ds.train_batch(self._feed(micro_batches))  # averaged over micro-batches and data ranks
        return StepResult(loss=loss, grad_norm=self._grad_norm(), skipped=self._skipped())

    @torch.no_grad()
    def eval_loss(self, micro_batches):
        loss = self.ds.eval_batch(self._feed(micro_batches), reduce_output="avg", bcast_loss=True)
        return float(loss)


def compiles(cfg: TrainingConfig, device: torch.device) -> bool:
    """train.compile, or where it is null: on CUDA unless ZeRO-3 (whose parameter hooks run inside the blocks)."""
    if cfg.train.compile is not None:
        return cfg.train.compile
    return device.type == "cuda" and cfg.parallel.zero_stage < 3


def compile_scope(cfg: TrainingConfig, layout) -> str:
    """What train.compile compiles: "the model" (one graph from the embedding to the final norm, as
    torch.compile(model) in a plain loop; a chunked fused loss runs eagerly, see loss.py) where one
    process holds the whole model plainly: tensor, context and pipeline 1, ZeRO below 3, no activation checkpointing, no PEFT; else "the blocks"
    (megatron's collectives, ZeRO-3's parameter hooks, recomputation and adapters stay between graphs).
    On nanoGPT's CPU shapes the whole model was 8% faster than its blocks (docs/benchmarks.md)."""
    whole = (layout.tensor == layout.context == layout.pipeline == 1 and cfg.parallel.zero_stage < 3
             and not cfg.train.activation_checkpointing and getattr(cfg, "peft", None) is None)
    return "the model" if whole else "the blocks"


def compile_module(module: torch.nn.Module, scope: str) -> None:
    """torch.compile in place (`Module.compile`: parameter names, hooks and checkpoints are unchanged),
    the whole module or every transformer Block. The blocks share their code, so one compilation
    serves them all. Compiling happens in the first forward."""
    if scope == "the model":
        module.compile()
        return
    for block in (m for m in module.modules() if isinstance(m, Block)):
        block.compile()


# The dtype parameters are built in (weight_precision: fp32 under bf16 autocast): what DeepSpeed
# would cast the module to anyway.
PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_module(cfg: TrainingConfig, ctx: ParallelContext, shape: ModelShape, *, init_weights: bool,
                 ds_config: dict, rng: RNGTracker) -> torch.nn.Module:
    """This rank's model, holding only what the rank owns, in the run's dtype, on its device.

    Pipelines: DeepSpeed builds this stage's layers only (on the device). ZeRO-3: built under
    deepspeed.zero.Init, each tensor partitioned over the data (x context) ranks as soon as its layer exists.
    Otherwise: built on the meta device, then this tensor rank's slices materialised. Every slot
    draws only its own tiles (gpt/model/slots.py); init_weights=False draws nothing (a checkpoint or
    model.init_from sets every weight next).
    """
    import deepspeed

    layout = ctx.layout
    dtype = PARAM_DTYPES[weight_precision(cfg)]
    slots = Slots.of(ctx, cfg.parallel, draw=init_weights, params_dtype=dtype, rng=rng)
    if layout.pipeline > 1:
        with torch.device(ctx.device):
            return build_pipeline(cfg.model, shape, slots, seed=cfg.train.seed, layout=layout,
                                  pipeline_layers=cfg.parallel.pipeline_layers,
                                  activation_checkpointing=cfg.train.activation_checkpointing)
    if deepspeed_zero_stage(cfg) == 3:
        # dtype=None: zero.Init takes the precision from the config (given a dtype, DeepSpeed 0.19
        # picks bf16 on CPUs whatever it is). memory_efficient_linear would replace
        # torch.nn.functional.linear for the rest of the process; our linear slots use DeepSpeed's
        # ZeRO-3 linear themselves (Slots.zero3, set by Slots.of).
        init_config = {**ds_config, "zero_optimization": {"memory_efficient_linear": False,
                                                          **ds_config["zero_optimization"]}}
        with deepspeed.zero.Init(data_parallel_group=ctx.dp_cp_group, config_dict_or_path=init_config, dtype=None,
                                 mpu=ctx.mpu()):
            module = build_model(cfg.model, shape, seed=cfg.train.seed, slots=slots, device=None, dtype=dtype,
                                 init=init_weights)
    else:
        module = build_model(cfg.model, shape, seed=cfg.train.seed, slots=slots, device=ctx.device, dtype=dtype,
                             init=init_weights)
    module.activation_checkpointing = cfg.train.activation_checkpointing
    return module


def build_engine(cfg: TrainingConfig, ctx: ParallelContext, shape: ModelShape, *,
                 init_weights: bool = True) -> TrainEngine:
    """The DeepSpeed engine of this rank; `init_weights=False` when a checkpoint will set every weight."""
    import deepspeed

    from gpt import log

    prepare_deepspeed(ctx.device, ctx.backend)
    layout = ctx.layout
    rng = RNGTracker(ctx.device)
    plain = uses_plain_optimizer(cfg)
    ds_config = deepspeed_config(cfg, layout, ctx.device.type)
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints to stdout; ours is for results
        module = build_module(cfg, ctx, shape, init_weights=init_weights, ds_config=ds_config, rng=rng)
    mpu = None if layout.pipeline > 1 else ctx.mpu()  # a PipelineModule brings its own grid (same rank layout)
    peft = getattr(cfg, "peft", None)  # a FinetuneConfig's; pretraining trains everything
    if peft is not None:
        canonical = partial(canonical_name, n_layer=cfg.model.n_layer) if layout.pipeline > 1 else (lambda name: name)
        apply_peft(module, peft, cfg.model, slots=Slots(layout.tensor, ctx.tp_group), seed=cfg.train.seed,
                   canonical=canonical)
    if compiles(cfg, ctx.device):
        compile_module(module, compile_scope(cfg, layout))
    counts = count_parameters(module, ctx)
    optimizer = build_optimizer(module.named_parameters(), cfg.optim, plain_fp32=plain,
                                norm_fn=partial(global_grad_norm, tp_rank=ctx.tp_rank,
                                                model_parallel_group=ctx.model_parallel_group))
    with contextlib.redirect_stdout(sys.stderr):
        ds, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config, mpu=mpu)
    if layout.data_context == 1 and layout.pipeline == 1 and deepspeed_zero_stage(cfg) == 0:
        # Nothing to average over: without this DeepSpeed still flattens every gradient into a buffer,
        # all-reduces it over the one-rank data group and copies it back, each step.
        ds.enable_backward_allreduce = False
    log.get("engine").debug("deepspeed engine %s ready", type(ds).__name__)
    # Dropout streams, seeded once everything is built: the default one shared by the tensor ranks
    # of a stage, the tensor-parallel one different on each (gpt/parallel/rng.py).
    rng.seed(cfg.train.seed + 100 * ctx.pp_rank, tp_rank=ctx.tp_rank)
    return (PipeEngine if layout.pipeline > 1 else DenseEngine)(ds, ctx, cfg, counts, rng)
