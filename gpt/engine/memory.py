"""Memory per rank: ONE model of what a training step holds, used by the start-up report, by the
refusal of a batch that cannot fit (trainer.session.check_memory), by gpt-plan and by the benchmarks.

Model states follow the ZeRO paper's arithmetic (Rajbhandari et al. 2020, sections 3/5: stage 1
partitions the optimizer state over the N data(-x-context) ranks, stage 2 also the gradients, stage 3
also the weights) with the bytes DeepSpeed 0.19 actually allocates for our configs (the table above
`model_state_bytes`); `plan_ranks` / `estimate_step` add DeepSpeed's buffers and the activations
autograd saves, per pipeline stage. `estimate` is the model-state part of the busiest rank (the
start-up report's first memory line, with frozen parameters for fine-tuning).

bf16 under torch.autocast (train.autocast, the default for bf16) keeps fp32 weights, gradients and
optimizer state and is counted as fp32 (`weight_precision`); the bf16 copies autocast makes during
a step are activations. The loss is the fused, chunked head + cross entropy (gpt/model/loss.py): it
keeps x's and the head weight's gradients for backward (fp32; bf16 with bf16 weights) and one chunk
of logits at a time, never the logits of the whole vocabulary.
"""

from dataclasses import dataclass

from gpt.config.training import TrainingConfig
from gpt.config.validate import Layout
from gpt.engine.deepspeed_config import bf16_autocast, deepspeed_zero_stage, weight_precision
from gpt.engine.pipeline import blocks_per_stage, stage_boundaries
from gpt.model.build import ModelShape
from gpt.model.gpt import layer_parameters


@dataclass(frozen=True)
class MemoryEstimate:
    """The busiest rank's model states (bytes)."""

    params: int  # parameters held by the busiest rank (before ZeRO-3 partitioning)
    zero_stage: int  # the stage DeepSpeed runs (bf16 at 0 runs as 1)
    weights: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


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
    stage (model_state_bytes); `trainable`: parameters that train on the busiest rank (fine-tuning),
    default all."""
    params, stage = max(stage_parameters(cfg, shape, layout)), deepspeed_zero_stage(cfg)
    w, g, o = model_state_bytes(params, weight_precision(cfg), stage, layout.data_context, _sub_group_size(cfg),
                                trainable=trainable)
    return MemoryEstimate(params=params, zero_stage=stage, weights=w, gradients=g, optimizer=o)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.2f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.2f} TiB"


# ---------------------------------------------------------------------------------------------
# The whole step, as DeepSpeed and this model's autograd hold it: what gpt-plan prints and what
# `estimate_step` returns. Bytes per parameter follow DeepSpeed 0.19's allocations (Psi: this
# rank's parameters, N: data-parallel ranks, e: 4 bytes in fp32, 2 in bf16/fp16):
#
#   stage  weights        gradients                          optimizer state
#   0      e              e                                  8 (AdamW m, v); fp16: + 4 (fp32 master)
#   1      e              fp32: 4 + 4/N (the partition at the step); bf16 (BF16_Optimizer): 4
#                         (fp32 accumulation); fp16: 2 + 4/N                 12/N (fp32 master, m, v)
#   2      e              e/N + 4/N (fp32 partition at the step)             12/N
#   3      e/N            e/N + 4/N (per sub_group_size)     8/N, + 4/N for a 16-bit model's fp32 master
#
# For 16-bit models stage 2 is DeepSpeed's estimate_zero2_model_states_mem_needs exactly (2 + 18/N);
# stage 3 counts the 16-bit gradient partition (grad_partitions_flat_buffer) that DeepSpeed's
# estimate_zero3 leaves out (20/N against its 18/N). `buffers` (buffer_bytes): DeepSpeed's buckets,
# ZeRO-3's gathered layers, the pipeline's kept outputs.

@dataclass(frozen=True)
class RankPlan:
    """One rank's memory for one training step (bytes; the ranks of one pipeline stage are alike)."""

    stage: int  # pipeline stage
    params: int  # parameters this rank holds (its tensor slice of its stage), before ZeRO-3 partitioning
    largest_layer: int  # parameters of its largest module (ZeRO-3 gathers one whole)
    weights: float
    gradients: float
    optimizer: float
    buffers: float  # DeepSpeed's gradient bucket; at ZeRO-3 also the gathered largest layer
    activations: float  # saved for backward, and the loss, with train.activation_checkpointing as set
    activations_other: float  # the same with activation checkpointing the other way round
    micro_batches_in_flight: int  # pipelines: forward passes a stage holds before its first backward
    reduce_copy: float = 0.0  # ZeRO 0: the flattened gradients of DeepSpeed's all-reduce, after backward

    @property
    def model_states(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        """The peak: during backward the activations, once they are freed the all-reduce's copy."""
        return self.model_states + self.buffers + max(self.activations, self.reduce_copy)


ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}


def model_state_bytes(params: int, precision: str, stage: int, data: int, sub_group_size: float = 1e9, *,
                      trainable: int | None = None) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes of a rank holding `params` parameters of which
    `trainable` (default all) have gradients and optimizer state (ZeRO-3 converts its gradient
    partition to fp32 one `zero_optimization.sub_group_size` at a time)."""
    e, n, p = ELEMENT[precision], data, float(params)
    q = p if trainable is None else float(trainable)
    if stage == 0:  # fp32 (bf16 at stage 0 runs as stage 1); fp16: FP16_Optimizer's fp32 master + m, v
        return e * p, e * q, (8 + (4 if e == 2 else 0)) * q
    if stage == 1:
        grads = {"fp32": 4 + 4 / n, "bf16": 4.0, "fp16": 2 + 4 / n}[precision]
        return e * p, grads * q, 12 * q / n
    if stage == 2:
        return e * p, (e + 4) * q / n, 12 * q / n
    return e * p / n, e * q / n + 4 * min(sub_group_size, q / n), (8 + (4 if e == 2 else 0)) * q / n


def _sub_group_size(cfg: TrainingConfig) -> float:
    return float(_zero_config(cfg).get("sub_group_size", 1e9))


def _zero_config(cfg: TrainingConfig) -> dict:
    return dict(cfg.deepspeed.get("zero_optimization", {}))


def buffer_bytes(cfg: TrainingConfig, shape: ModelShape, layout: Layout, stage: int, params: int,
                 largest: int) -> float:
    """What DeepSpeed holds besides model states and autograd's activations, on a rank of `stage`:

    - ZeRO 2/3: the gradient bucket (zero_optimization.reduce_bucket_size elements, at most the
      rank's parameters);
    - ZeRO 3: the parameters gathered whole (the module running plus what is prefetched:
      stage3_prefetch_bucket_size elements, or, from the second step on, what DeepSpeed keeps gathered
      for reuse: a module whose next use is within stage3_max_reuse_distance elements stays gathered,
      so from the forward to the backward about half that distance of the last layers; at most all of
      them) and the largest layer's whole gradient before its reduce-scatter (with the gathered layer,
      DeepSpeed's "largest layer memory");
    - pipelines, last stage: the previous micro-batch's hidden states (each pipe buffer keeps its output
      until it is reused) and, with tied embeddings, a copy of the embedding's gradient for the
      all-reduce between first and last stage.
    """
    zero, e, z = deepspeed_zero_stage(cfg), ELEMENT[weight_precision(cfg)], _zero_config(cfg)
    out = 0.0
    if zero >= 2:
        out += e * min(int(float(z.get("reduce_bucket_size", 5e8))), params)
    if zero == 3:
        prefetch = int(float(z.get("stage3_prefetch_bucket_size", 5e7)))
        reused = int(float(z.get("stage3_max_reuse_distance", 1e9))) // 2
        out += e * min(params, largest + max(prefetch, reused)) + e * largest
    if layout.pipeline > 1 and stage == layout.pipeline - 1:
        m, t = cfg.model, layout.tensor
        tokens = cfg.train.micro_batch_size * cfg.train.seq_len // layout.context
        if layout.grad_accum > 1:  # its output is the hidden states (the loss fuses the head)
            out += ELEMENT[cfg.train.precision] * tokens * m.n_embd
        if m.tie_embeddings:
            out += 4 * shape.padded_vocab // t * m.n_embd
    return out


# DeepSpeed's engine.allreduce_gradients: at ZeRO 0 it flattens the gradients into buckets of this
# many elements (MEMORY_OPT_ALLREDUCE_SIZE) for the all-reduce, whatever the data-parallel size.
ALLREDUCE_BUCKET = 500_000_000


def reduce_copy_bytes(cfg: TrainingConfig, layout: Layout, zero: int, params: int) -> float:
    """ZeRO 0 only: the flattened copy of the gradients (one bucket at most) made after backward;
    none with one data(-x-context) rank and no pipeline (the engine turns the all-reduce off)."""
    if zero != 0 or (layout.data_context == 1 and layout.pipeline == 1):
        return 0.0
    return ELEMENT[weight_precision(cfg)] * min(ALLREDUCE_BUCKET, params)


def block_activation_elements(cfg: TrainingConfig, shape: ModelShape, tensor: int, batch: int, seq: int) -> float:
    """Elements one block saves for backward for `batch` sequences of `seq` tokens on one tensor rank
    (this model's autograd: norm inputs and outputs, the fused qkv output, rotated q and k with the
    rotary tables gathered at the positions, the attention output, the MLP's hidden activations),
    measured with saved-tensor hooks in tests/engine/test_plan.py."""
    m = cfg.model
    h, t, a, kv = m.n_embd, tensor, m.n_head, m.n_kv_head or m.n_head
    d, f = h // a, shape.ffn_hidden
    k = 3 if m.norm == "rmsnorm" else 2  # input, (RMSNorm: x*rsqrt), output (the next linear's input)
    if cfg.parallel.sequence_parallel and t > 1:  # 1/t of the sequence, but the linear saves it all-gathered
        norms = 2 * ((k - 1) * h / t + h)
    else:
        norms = 2 * k * h  # replicated over the tensor group
    rope = m.position == "rope"
    attn = ((a + 2 * kv) * d + a * d + (a + kv) * d * rope) / t
    mlp = (4 if m.activation == "swiglu" else 2) * f / t
    tables = 4 * d * seq * rope  # cos and sin at the positions, for q and for k: (seq, hd) each
    return (norms + attn + mlp) * batch * seq + tables


def stage_activation_bytes(cfg: TrainingConfig, shape: ModelShape, layout: Layout, stage: int, *,
                           checkpointing: bool | None = None, micro_batch_size: int | None = None) -> tuple[float, int]:
    """(bytes, micro-batches in flight) of the activations a rank of pipeline `stage` holds at its peak:
    every block's saved tensors for each micro-batch in flight (one without pipelining; 1F1B holds
    min(stages - stage, micro-batches)), with activation checkpointing only each block's input plus
    one block recomputed; the last stage adds the fused loss (`loss_bytes`)."""
    m, t, cp = cfg.model, layout.tensor, layout.context
    ckpt = cfg.train.activation_checkpointing if checkpointing is None else checkpointing
    micro, seq = micro_batch_size or cfg.train.micro_batch_size, cfg.train.seq_len // cp  # this rank's share
    tokens = micro * seq
    e = ELEMENT[cfg.train.precision]
    blocks = blocks_per_stage(m, layout.pipeline, cfg.parallel.pipeline_layers)[stage]
    kv_gathered = 2 * (m.n_kv_head or m.n_head) * (m.n_embd // m.n_head) / t * tokens * (cp - 1)  # context parallel
    block = (block_activation_elements(cfg, shape, t, micro, seq) + kv_gathered) * e
    per_micro = blocks * (m.n_embd * tokens * e) + block if ckpt else blocks * block
    last = stage == layout.pipeline - 1
    if stage == 0:
        per_micro += m.n_embd * tokens * e  # the embedding output (the first block's input)
    if last:
        norm = (3 if m.norm == "rmsnorm" else 2) * m.n_embd * tokens * e
        per_micro += norm + loss_bytes(cfg, shape, t, tokens)
    in_flight = min(layout.pipeline - stage, layout.grad_accum) if layout.pipeline > 1 else 1
    return per_micro * in_flight, in_flight


def loss_bytes(cfg: TrainingConfig, shape: ModelShape, tensor: int, tokens: int) -> float:
    """The fused head + cross entropy (gpt/model/loss.py) on one tensor rank for `tokens` tokens: the
    gradients of x (tokens, h) and of the head weight (v/p, h) it keeps for backward (bf16 with bf16
    weights, DeepSpeed's bf16 engine; fp32 otherwise), one chunk of logits in fp32 (and in bf16,
    under autocast, with bf16 copies of x and the weight)."""
    from gpt.model.loss import chunk_tokens

    h, v = cfg.model.n_embd, shape.padded_vocab // tensor
    chunk = chunk_tokens(tokens, v) * v
    low = bf16_autocast(cfg) or cfg.train.precision != "fp32"
    copies = 2 * (v + tokens) * h if bf16_autocast(cfg) else 0
    kept = 2 if cfg.train.precision == "bf16" and not bf16_autocast(cfg) else 4
    return kept * (tokens + v) * h + chunk * (4 + (4 if low else 0)) + copies


def largest_layer(cfg: TrainingConfig, shape: ModelShape, tensor: int) -> int:
    """Parameters of the largest module one tensor rank holds (DeepSpeed's model_to_params rule)."""
    m = cfg.model
    h, t, kv, d = m.n_embd, tensor, m.n_kv_head or m.n_head, m.n_embd // m.n_head
    b, f = 1 if m.bias else 0, shape.ffn_hidden
    qkv = (m.n_head + 2 * kv) * d
    return max(shape.padded_vocab * h // t, (h * qkv + b * qkv) // t, (h * f + b * f) // t, f * h // t + b * h,
               m.max_seq_len * h if m.position == "learned" else 0)


def plan_ranks(cfg: TrainingConfig, shape: ModelShape, layout: Layout, *, stage_params: list[int] | None = None,
               stage_largest: list[int] | None = None) -> list[RankPlan]:
    """One RankPlan per pipeline stage. `stage_params`/`stage_largest` (parameters and largest module
    per stage, e.g. counted on a model built on the meta device) default to the formulas."""
    stage_params = stage_params or stage_parameters(cfg, shape, layout)
    big = largest_layer(cfg, shape, layout.tensor)
    stage_largest = stage_largest or [big] * layout.pipeline
    zero, out = deepspeed_zero_stage(cfg), []
    for s, (params, largest) in enumerate(zip(stage_params, stage_largest)):
        w, g, o = model_state_bytes(params, weight_precision(cfg), zero, layout.data_context, _sub_group_size(cfg))
        act, flight = stage_activation_bytes(cfg, shape, layout, s)
        other, _ = stage_activation_bytes(cfg, shape, layout, s, checkpointing=not cfg.train.activation_checkpointing)
        out.append(RankPlan(stage=s, params=params, largest_layer=largest, weights=w, gradients=g, optimizer=o,
                            buffers=buffer_bytes(cfg, shape, layout, s, params, largest), activations=act,
                            activations_other=other, micro_batches_in_flight=flight,
                            reduce_copy=reduce_copy_bytes(cfg, layout, zero, params)))
    return out


def estimate_step(cfg: TrainingConfig, shape: ModelShape, layout: Layout) -> int:
    """Peak bytes of the busiest rank in one training step: model states, DeepSpeed's buffers and the
    activations of cfg.train.micro_batch_size samples of cfg.train.seq_len tokens (with the run's
    activation checkpointing and pipeline schedule). No process group, no model: config arithmetic
    only, so it can refuse a batch before anything starts (see gpt-plan for the breakdown)."""
    return int(max(r.total for r in plan_ranks(cfg, shape, layout)))


def activation_bytes(cfg: TrainingConfig, shape: ModelShape, layout: Layout) -> float:
    """Activation bytes of the busiest pipeline stage (see stage_activation_bytes)."""
    return max(stage_activation_bytes(cfg, shape, layout, s)[0] for s in range(layout.pipeline))


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
