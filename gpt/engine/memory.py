"""Memory per rank for weights, gradients and optimizer state: the ZeRO paper's arithmetic.

Rajbhandari et al. 2020 (ZeRO), section 3/5: with Psi parameters on a rank, N_d data-parallel
ranks and Adam, mixed precision keeps 2 Psi of half-precision weights, 2 Psi of gradients and
K Psi = 12 Psi of optimizer state (fp32 master weights, momentum, variance); stage 1 divides the
optimizer state by N_d, stage 2 also the gradients, stage 3 also the weights. We use the bytes our
DeepSpeed config actually asks for:

    precision  weights  gradients                         optimizer state
    fp32       4        4                                 8  (Adam m, v)
    bf16       2        4  (accumulated in fp32: data_types.grad_accum_dtype)  12 (fp32 master, m, v)
    fp16       2        2                                 12 (fp32 master, m, v)

bf16 under torch.autocast (train.autocast, the default) keeps fp32 weights, gradients and state and
is counted as fp32 (the bf16 copies autocast makes during a step are activations). DeepSpeed's bf16
engine at parallel.zero_stage=0 runs its BF16_Optimizer, which shards its fp32 state like
stage 1 (see deepspeed_config.deepspeed_zero_stage), so it is counted as stage 1. Psi is the rank
holding the most parameters (the largest pipeline stage, its tensor slice). Activations, buffers,
communication buckets and allocator fragmentation are not included: this is a floor, not a promise.
"""

from dataclasses import dataclass

from gpt.config.training import TrainingConfig
from gpt.config.validate import Layout
from gpt.engine.deepspeed_config import deepspeed_zero_stage, weight_precision
from gpt.engine.pipeline import stage_boundaries
from gpt.model.build import ModelShape
from gpt.model.gpt import layer_parameters

# (weights, gradients, optimizer state) bytes per parameter.
BYTES_PER_PARAM = {"fp32": (4, 4, 8), "bf16": (2, 4, 12), "fp16": (2, 2, 12)}


@dataclass(frozen=True)
class MemoryEstimate:
    params: int  # parameters held by the busiest rank (before ZeRO-3 partitioning)
    zero_stage: int  # the stage DeepSpeed runs (bf16 at 0 runs as 1)
    weights: float  # bytes
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def zero_memory(params: int, precision: str, zero_stage: int, data: int, trainable: int | None = None) -> MemoryEstimate:
    """Bytes of weights, gradients and optimizer state on one rank holding `params` parameters, of
    which `trainable` (default: all) have gradients and optimizer state (frozen ones have neither)."""
    trainable = params if trainable is None else trainable
    bw, bg, bo = BYTES_PER_PARAM[precision]
    w, g, o = bw * params, bg * trainable, bo * trainable
    if zero_stage >= 1:
        o /= data
    if zero_stage >= 2:
        g /= data
    if zero_stage >= 3:
        w /= data
    return MemoryEstimate(params=params, zero_stage=zero_stage, weights=w, gradients=g, optimizer=o)


def stage_parameters(cfg: TrainingConfig, shape: ModelShape, layout: Layout) -> list[int]:
    """Parameters on one tensor rank of each pipeline stage (a tied embedding counts on both ends)."""
    m = cfg.model
    layers = layer_parameters(m, shape.padded_vocab, shape.ffn_hidden, layout.tensor)
    if layout.pipeline == 1:
        return [sum(layers)]
    bounds = stage_boundaries(m, layout.pipeline, cfg.parallel.pipeline_layers)
    stages = [sum(layers[a:b]) for a, b in zip(bounds, bounds[1:])]
    if m.tie_embeddings:
        stages[-1] += layers[0]  # the last stage holds its own copy of the Embedding for the head
    return stages


def estimate(cfg: TrainingConfig, shape: ModelShape, layout: Layout, trainable: int | None = None) -> MemoryEstimate:
    """The busiest rank's weights/gradients/optimizer bytes for this run's layout, precision and ZeRO
    stage; `trainable`: parameters that train on the busiest rank (fine-tuning), default all."""
    return zero_memory(max(stage_parameters(cfg, shape, layout)), weight_precision(cfg), deepspeed_zero_stage(cfg),
                       layout.data, trainable)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.2f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.2f} TiB"


def activation_bytes(cfg: TrainingConfig, shape: ModelShape, layout: Layout) -> float:
    """A floor of the activation bytes the busiest rank keeps for backward (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", section 4).

    Per block and micro-batch of b sequences of s tokens, hidden size h, tensor size t: (10 + 24/t)
    s*b*h values of 2 bytes in 16-bit training (twice that in fp32), 34/t with sequence parallelism;
    the attention scores' 5*a*s^2*b are left out (fused/flash attention never stores them), which
    makes this a floor. Context parallelism splits s over its ranks. With activation checkpointing a
    block keeps only its input (2 s*b*h bytes in 16-bit) plus one block recomputed at a time. The
    head's fp32 logits add 4*s*b*V/t. With a pipeline the first stage holds min(stages,
    accumulation) micro-batches in flight (1F1B).
    """
    m, t = cfg.model, layout.tensor
    s, b, h = cfg.train.seq_len / layout.context, cfg.train.micro_batch_size, m.n_embd
    scale = 2.0 if cfg.train.precision == "fp32" else 1.0
    per_value = 34 / t if cfg.parallel.sequence_parallel and t > 1 else 10 + 24 / t
    full_block = per_value * s * b * h * 2 * scale
    blocks = -(-m.n_layer // layout.pipeline)
    if cfg.train.activation_checkpointing:
        per_micro = blocks * 2 * s * b * h * scale + full_block
    else:
        per_micro = blocks * full_block
    in_flight = min(layout.pipeline, layout.grad_accum) if layout.pipeline > 1 else 1
    logits = 4.0 * s * b * shape.padded_vocab / t
    return per_micro * in_flight + logits


def available_bytes(device) -> tuple[float, str] | None:
    """Memory one rank can use on `device` and where that figure comes from: a GPU's free memory, or on
    CPU the machine's (or cgroup's) available RAM shared by the ranks of this node; None if unknown."""
    import os

    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return float(free), f"free memory of {torch.cuda.get_device_name(device)}"
    try:
        info = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines())
        available, source = float(info["MemAvailable"].split()[0]) * 1024, "available RAM (/proc/meminfo)"
    except (OSError, KeyError, ValueError):
        return None
    try:  # a container's or SLURM job's cgroup (v2) may allow less than the machine has
        limit, used = _read("/sys/fs/cgroup/memory.max").strip(), _read("/sys/fs/cgroup/memory.current")
        if limit != "max" and float(limit) - float(used) < available:
            available, source = float(limit) - float(used), "the cgroup's memory limit (memory.max)"
    except (OSError, ValueError):
        pass
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if ranks > 1:
        return available / ranks, f"{source} / {ranks} ranks on this node"
    return available, source


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
