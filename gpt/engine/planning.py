"""gpt-plan: every rank's memory for a training run on a given machine, before anything starts.

The model is built on the meta device (no memory, no init, no process group: tensor size 1 needs no
megatron), and each rank's share is read off its parameters: a tensor-parallel parameter holds
1/tensor of its elements on each tensor rank, the others are whole; a pipeline stage holds its
layers (the last also a copy of a tied embedding). The bytes come from gpt/engine/memory.py
(`plan_ranks`: model states, DeepSpeed's buffers, activations). Layouts near the asked one are
tried the same way, and those that fit are listed, fewest changes first.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

from gpt.config.plan import PlanConfig, memory_bytes, validate_machine
from gpt.config.validate import Layout, validate_training
from gpt.engine import memory
from gpt.engine.deepspeed_config import deepspeed_zero_stage
from gpt.engine.pipeline import blocks_per_stage, stage_boundaries
from gpt.errors import ConfigError, GptError
from gpt.model.build import ModelShape, model_shape

GiB = 2**30


def vocabulary(cfg: PlanConfig) -> tuple[int, str]:
    """The tokenizer vocabulary the run would have, and where it comes from."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    path = cfg.data.blend[0][1] if cfg.data.blend else cfg.data.path
    try:
        from gpt.data import read_metadata

        return int(read_metadata(Path(str(path)))["tokenizer"]["vocab_size"]), f"the tokenizer of {path}"
    except GptError:
        raise ConfigError(f"model.vocab_size is null and data.path={path} holds no token shards to read it from; "
                          f"set model.vocab_size (e.g. 128256 for Llama 3's tokenizer, 50257 for GPT-2's)") from None


def meta_stage_counts(cfg, shape: ModelShape, layout: Layout) -> tuple[list[int], list[int]]:
    """(parameters, largest module's parameters) of one tensor rank of each pipeline stage, counted on
    the model built on the meta device."""
    from gpt.model.build import build_model

    model = build_model(cfg.model, shape, seed=0, device="meta")
    layers = [model.embedding, *model.blocks, model.norm, model.output]

    def local(p) -> int:
        return p.numel() // layout.tensor if getattr(p, "tensor_model_parallel", False) else p.numel()

    bounds = stage_boundaries(cfg.model, layout.pipeline, cfg.parallel.pipeline_layers) \
        if layout.pipeline > 1 else [0, len(layers)]
    params, largest = [], []
    for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
        held = layers[a:b]
        if layout.pipeline > 1 and s == layout.pipeline - 1 and cfg.model.tie_embeddings:
            held = held + [model.embedding]  # the last stage's own copy, for the tied head
        params.append(sum(local(p) for layer in held for p in layer.parameters()))
        largest.append(max(sum(local(p) for p in m.parameters(recurse=False)) for layer in held for m in layer.modules()))
    return params, largest


@dataclass(frozen=True)
class Candidate:
    changes: tuple[str, ...]  # overrides relative to the asked config
    layout: Layout
    peak: float  # busiest rank, bytes


def _with(cfg: PlanConfig, tensor: int, pipeline: int, zero: int, ckpt: bool, micro: int) -> PlanConfig:
    c = copy.deepcopy(cfg)
    c.parallel.tensor, c.parallel.pipeline, c.parallel.zero_stage = tensor, pipeline, zero
    c.parallel.pipeline_layers = cfg.parallel.pipeline_layers if pipeline == cfg.parallel.pipeline else None
    c.train.activation_checkpointing, c.train.micro_batch_size = ckpt, micro
    return c


def nearest_fitting(cfg: PlanConfig, shape: ModelShape, world: int, capacity: float, limit: int = 5) -> list[Candidate]:
    """Layouts of the same world size and global batch that fit in `capacity` bytes per rank, fewest
    changes first (then the smaller peak): tensor and pipeline sizes, ZeRO stage, activation
    checkpointing, micro-batch size."""
    p, t = cfg.parallel, cfg.train
    tensors = [n for n in (1, 2, 4, 8, 16) if n <= max(cfg.gpus_per_node, p.tensor)]
    pipelines = [n for n in range(1, world + 1) if world % n == 0 and n <= cfg.model.n_layer]
    micros = sorted({m for m in (t.micro_batch_size, *(t.micro_batch_size // 2 ** k for k in range(1, 8))) if m >= 1})
    asked = (p.tensor, p.pipeline, deepspeed_zero_stage(cfg), t.activation_checkpointing, t.micro_batch_size)
    out, seen = [], {asked}
    for tensor in tensors:
        for pipeline in pipelines:
            for zero in (0, 1, 2, 3):
                for ckpt in (False, True):
                    for micro in micros:
                        c = _with(cfg, tensor, pipeline, zero, ckpt, micro)
                        changes = tuple(f"{k}={v}" for k, v, old in (
                            ("parallel.tensor", tensor, p.tensor), ("parallel.pipeline", pipeline, p.pipeline),
                            ("parallel.zero_stage", zero, p.zero_stage),
                            ("train.activation_checkpointing", str(ckpt).lower(), str(t.activation_checkpointing).lower()),
                            ("train.micro_batch_size", micro, t.micro_batch_size)) if v != old)
                        runs_as = (tensor, pipeline, deepspeed_zero_stage(c), ckpt, micro)
                        if runs_as in seen:  # e.g. bf16 at ZeRO 0 and 1 run alike
                            continue
                        seen.add(runs_as)
                        try:
                            layout = validate_training(c, world_size=world)
                        except ConfigError:
                            continue
                        peak = memory.estimate_step(c, shape, layout)
                        if peak <= capacity:
                            out.append(Candidate(changes, layout, peak))
    out.sort(key=lambda c: (len(c.changes), c.peak))
    return out[:limit]


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def report(cfg: PlanConfig) -> str:
    """gpt-plan's printout for `cfg` (raises ConfigError, one line, for an impossible layout)."""
    world = validate_machine(cfg)
    capacity = memory_bytes(cfg.gpu_memory)
    layout = validate_training(cfg, world_size=world)
    vocab, vocab_source = vocabulary(cfg)
    shape = model_shape(cfg.model, vocab)
    params, largest = meta_stage_counts(cfg, shape, layout)
    ranks = memory.plan_ranks(cfg, shape, layout, stage_params=params, stage_largest=largest)
    from gpt.model.gpt import count_parameters

    m, t = cfg.model, cfg.train
    total_params = count_parameters(m, shape.padded_vocab, shape.ffn_hidden)
    zero = deepspeed_zero_stage(cfg)
    lines = [
        f"model {m.name}: {total_params:,} parameters (vocabulary {vocab} from {vocab_source}, padded to "
        f"{shape.padded_vocab}); {m.n_layer} blocks, hidden {m.n_embd}, {m.n_head} heads"
        f"{f' ({m.n_kv_head} kv)' if m.n_kv_head else ''}, MLP {shape.ffn_hidden}",
        f"machine: {cfg.nodes} node(s) x {cfg.gpus_per_node} GPUs = {world} ranks, {_gib(capacity)} GiB each",
        f"layout: {layout.describe()}; precision {t.precision}, ZeRO stage {cfg.parallel.zero_stage}"
        + (f" (runs as {zero})" if zero != cfg.parallel.zero_stage else "")
        + f", activation checkpointing {'on' if t.activation_checkpointing else 'off'}",
        f"tokens per step: {t.global_batch_size * t.seq_len:,} (global batch {t.global_batch_size} x seq_len "
        f"{t.seq_len}); per rank and micro-batch {t.micro_batch_size * t.seq_len:,}",
        "",
        "per rank, GiB (every tensor and data rank of a stage holds the same):",
    ]
    head = ["stage", "blocks", "parameters", "weights", "gradients", "optimizer", "buffers",
            "act. ckpt off", "act. ckpt on", "total", f"of {_gib(capacity)}"]
    blocks = blocks_per_stage(m, layout.pipeline, cfg.parallel.pipeline_layers)
    rows = []
    for r in ranks:
        off, on = (r.activations_other, r.activations) if t.activation_checkpointing else (r.activations, r.activations_other)
        spare = capacity - r.total
        rows.append([str(r.stage), str(blocks[r.stage]), f"{r.params:,}", _gib(r.weights), _gib(r.gradients),
                     _gib(r.optimizer), _gib(r.buffers), _gib(off), _gib(on), _gib(r.total),
                     f"fits ({_gib(spare)} spare)" if spare >= 0 else f"over by {_gib(-spare)}"])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *rows]]
    busiest = max(ranks, key=lambda r: r.total)
    lines.append("")
    if busiest.total <= capacity:
        lines.append(f"fits: the busiest rank (stage {busiest.stage}) needs {_gib(busiest.total)} of {_gib(capacity)} GiB")
    else:
        lines.append(f"does not fit: the busiest rank (stage {busiest.stage}) needs {_gib(busiest.total)} GiB, "
                     f"{_gib(busiest.total - capacity)} GiB more than {_gib(capacity)}")
    near = nearest_fitting(cfg, shape, world, capacity)
    if near:
        lines.append("layouts that fit, fewest changes first (same machine and global batch):")
        for c in near:
            lines.append(f"  {' '.join(c.changes):<90} {_gib(c.peak)} GiB  ({c.layout.describe()})")
    else:
        lines.append("no layout of this machine and global batch fits; use more GPUs, a smaller model or shorter sequences")
    lines.append("")
    lines.append("Activations count what autograd saves for backward in one micro-batch (times the micro-batches "
                 "a pipeline stage holds) plus the loss; the CUDA context and allocator fragmentation are not included.")
    return "\n".join(lines)
