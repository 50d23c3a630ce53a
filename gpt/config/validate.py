"""Cross-field rules of a training config, checked once before any process group starts.

Every message names the offending key(s), the value(s) and the fix.
"""

import math
import os
from dataclasses import dataclass

from gpt.config.finetune import METHODS, lora_targets
from gpt.config.training import TrainingConfig
from gpt.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    """How a run's processes are arranged (tensor fastest, then data, then pipeline)."""

    world: int
    tensor: int
    pipeline: int
    data: int
    grad_accum: int
    context: int = 1

    @property
    def data_context(self) -> int:
        """Ranks that reduce gradients and share ZeRO state: data x context (Megatron's dp-cp group)."""
        return self.data * self.context

    def describe(self) -> str:
        cp = f" x context {self.context}" if self.context > 1 else ""
        return (f"world={self.world} = tensor {self.tensor}{cp} x data {self.data} x pipeline {self.pipeline}; "
                f"gradient accumulation {self.grad_accum}")


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def ffn_hidden(cfg) -> int:
    """MLP inner size: explicit, else 4h (gelu) or Llama's 2/3*4h rounded up to 256 (swiglu)."""
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    if cfg.activation == "swiglu":
        return 256 * math.ceil(int(2 * 4 * cfg.n_embd / 3) / 256)
    return 4 * cfg.n_embd


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Pad the table so every tensor rank holds the same number of rows.

    The pad depends on model.vocab_multiple only, never on the layout, so checkpoints reshard freely.
    """
    return multiple * math.ceil(vocab_size / multiple)


MAX_SEED = 2**32 - 1
ROPE_SCALINGS = ("none", "linear", "ntk", "llama3")  # what gpt/model/rope.py implements (no torch here)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _one_of(key: str, value, options) -> None:
    _check(value in options, f"{key}={value} is not one of {'|'.join(map(str, options))}")


def validate_training(cfg: TrainingConfig, world_size: int | None = None) -> Layout:
    world = world_size_from_env() if world_size is None else world_size
    m, p, t, o = cfg.model, cfg.parallel, cfg.train, cfg.optim

    _one_of("model.norm", m.norm, ("layernorm", "rmsnorm"))
    _one_of("model.activation", m.activation, ("gelu", "swiglu"))
    _one_of("model.position", m.position, ("learned", "rope"))
    _one_of("train.precision", t.precision, ("fp32", "bf16", "fp16"))
    _one_of("parallel.zero_stage", p.zero_stage, (0, 1, 2, 3))
    _one_of("logging.wandb.mode", cfg.logging.wandb.mode, ("online", "offline", "disabled"))
    _one_of("device", cfg.device, ("auto", "cpu", "cuda"))
    for key, v in (("model.n_layer", m.n_layer), ("model.n_head", m.n_head), ("model.n_embd", m.n_embd),
                   ("train.seq_len", t.seq_len), ("train.global_batch_size", t.global_batch_size),
                   ("train.micro_batch_size", t.micro_batch_size), ("train.steps", t.steps),
                   ("parallel.tensor", p.tensor), ("parallel.pipeline", p.pipeline), ("parallel.context", p.context)):
        _check(v >= 1, f"{key}={v} must be at least 1")
    for key, v in (("eval.every", cfg.eval.every), ("eval.iters", cfg.eval.iters),
                   ("checkpoint.every", cfg.checkpoint.every), ("checkpoint.keep_last", cfg.checkpoint.keep_last),
                   ("optim.warmup_steps", o.warmup_steps), ("logging.every", cfg.logging.every),
                   ("train.max_bad_steps", t.max_bad_steps), ("train.check_replicas_every", t.check_replicas_every)):
        _check(v >= 0, f"{key}={v} must not be negative")
    _check(t.stop_at is None or 1 <= t.stop_at <= t.steps, f"train.stop_at={t.stop_at} must be in [1, train.steps={t.steps}]")
    _check(0 <= t.seed <= MAX_SEED,
           f"train.seed={t.seed} must be in [0, 2**32-1] (it seeds torch, numpy and the data order)")
    _check(cfg.eval.every == 0 or cfg.eval.iters >= 1,
           f"eval.iters={cfg.eval.iters} with eval.every={cfg.eval.every}: an evaluation needs at least one batch; "
           f"set eval.iters>=1, or eval.every=0 to turn evaluation off")
    es = cfg.eval.early_stopping
    _check(es.patience >= 0, f"eval.early_stopping.patience={es.patience} must not be negative (0 turns early stopping off)")
    _check(_finite(es.min_delta) and es.min_delta >= 0,
           f"eval.early_stopping.min_delta={es.min_delta} must be a finite number >= 0")
    _check(es.patience == 0 or cfg.eval.every > 0,
           f"eval.early_stopping.patience={es.patience} needs evaluations: set eval.every>0")
    _check(t.precision != "fp16" or p.zero_stage >= 1,
           "train.precision=fp16 needs parallel.zero_stage>=1 (its fp32 master weights live in the ZeRO optimizer); or use bf16")
    _check(t.peak_flops is None or (_finite(t.peak_flops) and t.peak_flops > 0),
           f"train.peak_flops={t.peak_flops} must be a positive FLOP/s per device (e.g. 989.4e12), or null to look it up")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")
    _check(0.0 <= cfg.data.val_fraction < 1.0, f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    validate_optim(o, t.steps)

    # Model shape.
    _check(m.vocab_multiple >= 1, f"model.vocab_multiple={m.vocab_multiple} must be at least 1 (1: no padding)")
    _check(m.vocab_size is None or m.vocab_size >= 1, f"model.vocab_size={m.vocab_size} must be at least 1, or null "
                                                       f"to read it from the shards")
    _check(m.n_kv_head is None or m.n_kv_head >= 1,
           f"model.n_kv_head={m.n_kv_head} must be at least 1, or null for one per query head")
    _check(m.ffn_hidden is None or m.ffn_hidden >= 1,
           f"model.ffn_hidden={m.ffn_hidden} must be at least 1, or null for the activation's default size")
    _check(m.max_seq_len >= 1, f"model.max_seq_len={m.max_seq_len} must be at least 1")
    _check(_finite(m.init_std) and m.init_std > 0, f"model.init_std={m.init_std} must be a positive finite number")
    _check(_finite(m.norm_eps) and m.norm_eps > 0, f"model.norm_eps={m.norm_eps} must be a positive finite number")
    _check(_finite(m.rope_theta) and m.rope_theta > 0, f"model.rope_theta={m.rope_theta} must be a positive finite number")
    _check(m.n_embd % m.n_head == 0, f"model.n_head={m.n_head} does not divide model.n_embd={m.n_embd}")
    kv = m.n_kv_head or m.n_head
    _check(m.n_head % kv == 0, f"model.n_kv_head={kv} does not divide model.n_head={m.n_head}")
    if m.position == "rope":
        _check((m.n_embd // m.n_head) % 2 == 0, f"rope needs an even head size; model.n_embd/model.n_head={m.n_embd // m.n_head}")
    validate_rope_scaling(m)
    _check(t.seq_len <= m.max_seq_len,
           f"train.seq_len={t.seq_len} exceeds model.max_seq_len={m.max_seq_len}; lower the first or raise the second")

    # Layout.
    model_ranks = p.tensor * p.pipeline * p.context
    _check(world % model_ranks == 0,
           f"world size {world} is not divisible by parallel.tensor*parallel.pipeline*parallel.context="
           f"{p.tensor}*{p.pipeline}*{p.context}; use a number of processes that is a multiple of {model_ranks}")
    dp = world // model_ranks
    _check(t.seq_len % (2 * p.context) == 0 or p.context == 1,
           f"train.seq_len={t.seq_len} is not divisible by 2*parallel.context={2 * p.context} (each sequence is split "
           f"into 2*context chunks); use a multiple of {2 * p.context}")
    if p.sequence_parallel:
        _check(p.tensor > 1, "parallel.sequence_parallel=true needs parallel.tensor > 1 (it splits the sequence over "
                             "the tensor group); set parallel.tensor or drop sequence_parallel")
        local = t.seq_len // p.context
        _check(local % p.tensor == 0,
               f"parallel.sequence_parallel=true: the sequence each rank holds (train.seq_len/parallel.context={local}) "
               f"is not divisible by parallel.tensor={p.tensor}")
    _check(m.n_head % p.tensor == 0, f"parallel.tensor={p.tensor} does not divide model.n_head={m.n_head}")
    _check(kv % p.tensor == 0, f"parallel.tensor={p.tensor} does not divide the key/value heads model.n_kv_head={kv}")
    _check(ffn_hidden(m) % p.tensor == 0, f"parallel.tensor={p.tensor} does not divide the MLP size {ffn_hidden(m)} (model.ffn_hidden)")
    _check(m.vocab_multiple % p.tensor == 0,
           f"parallel.tensor={p.tensor} does not divide model.vocab_multiple={m.vocab_multiple}")
    if p.pipeline > 1:
        _check(m.n_layer >= p.pipeline,
               f"parallel.pipeline={p.pipeline} exceeds model.n_layer={m.n_layer}: every stage needs a block")
        _check(p.zero_stage <= 1,
               f"parallel.zero_stage={p.zero_stage} cannot be combined with parallel.pipeline={p.pipeline} "
               f"(DeepSpeed shards gradients/parameters across micro-batches that pipelining interleaves); "
               f"use parallel.zero_stage=1 with pipelines, or parallel.pipeline=1 for ZeRO-{p.zero_stage}")
    if p.pipeline_layers is not None:
        _check(len(p.pipeline_layers) == p.pipeline and sum(p.pipeline_layers) == m.n_layer
               and all(n >= 1 for n in p.pipeline_layers),
               f"parallel.pipeline_layers={list(p.pipeline_layers)} must list {p.pipeline} positive counts "
               f"summing to model.n_layer={m.n_layer}")

    # Batch.
    per_step = t.micro_batch_size * dp
    _check(t.global_batch_size % per_step == 0,
           f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size*data_parallel="
           f"{t.micro_batch_size}*{dp}={per_step}; make it a multiple of {per_step}")

    # Downstream tasks (lm-evaluation-harness).
    if cfg.eval.tasks:
        _check(cfg.eval.tasks_every >= 1, f"eval.tasks_every={cfg.eval.tasks_every} must be at least 1 when eval.tasks is set")
        _check(cfg.eval.tasks_limit is None or cfg.eval.tasks_limit > 0,
               f"eval.tasks_limit={cfg.eval.tasks_limit} must be positive (examples per task, or a fraction below 1)")
        _check(p.pipeline == 1 and p.context == 1 and not p.sequence_parallel,
               f"eval.tasks runs on the training model with parallel.pipeline=1, parallel.context=1 and without "
               f"parallel.sequence_parallel only (here pipeline={p.pipeline}, context={p.context}, sequence_parallel="
               f"{str(p.sequence_parallel).lower()}); evaluate the run's checkpoints with "
               f"`gpt-eval checkpoint=<run.dir> tasks=[...]` instead")

    # Data.
    _check(bool(cfg.data.path) or bool(cfg.data.blend), "set data.path (token shards from gpt-preprocess) or data.blend")
    validate_blend(cfg.data.blend)
    validate_peft(cfg)
    return Layout(world=world, tensor=p.tensor, pipeline=p.pipeline, data=dp, grad_accum=t.global_batch_size // per_step,
                  context=p.context)


def validate_rope_scaling(m) -> None:
    """model.rope_* (gpt/model/rope.py): only with rotary positions, factors that extend the context."""
    _one_of("model.rope_scaling", m.rope_scaling, ROPE_SCALINGS)
    if m.rope_scaling == "none":
        return
    _check(m.position == "rope", f"model.rope_scaling={m.rope_scaling} needs model.position=rope (it rescales rotary "
                                 f"frequencies; learned positions have none)")
    _check(math.isfinite(m.rope_factor) and m.rope_factor >= 1.0,
           f"model.rope_factor={m.rope_factor} must be >= 1 (new context / original context)")
    if m.rope_scaling == "ntk":
        _check(m.n_embd // m.n_head > 2, "model.rope_scaling=ntk needs a head size above 2")
    if m.rope_scaling == "llama3":
        original = m.rope_original_max_seq_len
        _check(original is None or original >= 1, f"model.rope_original_max_seq_len={original} must be at least 1")
        _check(0 < m.rope_low_freq_factor < m.rope_high_freq_factor,
               f"model.rope_low_freq_factor={m.rope_low_freq_factor} must be positive and below "
               f"model.rope_high_freq_factor={m.rope_high_freq_factor}")


def validate_optim(o, steps: int) -> None:
    _check(_finite(o.lr) and o.lr > 0, f"optim.lr={o.lr} must be a positive finite number")
    _check(_finite(o.min_lr) and 0 <= o.min_lr <= o.lr, f"optim.min_lr={o.min_lr} must be in [0, optim.lr={o.lr}]")
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"optim.beta1={o.beta1}, optim.beta2={o.beta2} must be in [0, 1)")
    _check(_finite(o.eps) and o.eps > 0, f"optim.eps={o.eps} must be a positive finite number (AdamW's epsilon, e.g. 1e-8)")
    _check(_finite(o.weight_decay) and o.weight_decay >= 0,
           f"optim.weight_decay={o.weight_decay} must be a finite number >= 0")
    _check(_finite(o.grad_clip) and o.grad_clip >= 0,
           f"optim.grad_clip={o.grad_clip} must be a finite number >= 0 (0 disables clipping)")
    _check(o.decay_steps is None or o.decay_steps >= 1,
           f"optim.decay_steps={o.decay_steps} must be at least 1, or null to decay over train.steps={steps}")


def validate_blend(blend) -> None:
    """data.blend is [[weight > 0, path], ...]."""
    if not blend:
        return
    for i, entry in enumerate(blend):
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str) and bool(entry[1])
        ok = ok and isinstance(entry[0], (int, float)) and not isinstance(entry[0], bool)
        _check(ok and _finite(entry[0]) and entry[0] > 0,
               f"data.blend[{i}]={entry!r} must be [weight > 0, path], e.g. data.blend=[[0.7,/path/a],[0.3,/path/b]] "
               f"(quote paths with commas or brackets: [[0.7,'/my data, v2']])")


def validate_peft(cfg) -> None:
    """The `peft` section of a FinetuneConfig (a no-op for configs without one, e.g. pretraining)."""
    peft = getattr(cfg, "peft", None)
    if peft is None:
        return
    _check(bool(cfg.model.init_from), "gpt-finetune needs the weights to start from: checkpoint=<run.dir, checkpoint "
                                      "directory, .../checkpoints/best, or a local Hugging Face directory>")
    _one_of("peft.method", peft.method, METHODS)
    if peft.method == "lora":
        _check(peft.rank >= 1, f"peft.rank={peft.rank} must be at least 1")
        _check(peft.alpha > 0, f"peft.alpha={peft.alpha} must be positive")
        _check(0.0 <= peft.dropout < 1.0, f"peft.dropout={peft.dropout} must be in [0, 1)")
        _check(len(peft.targets) > 0, "peft.targets is empty; name the layers to adapt, e.g. peft.targets=[attn.qkv,attn.proj]")
        try:
            lora_targets(peft.targets, cfg.model.activation)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif peft.method == "adapter":
        _check(peft.bottleneck >= 1, f"peft.bottleneck={peft.bottleneck} must be at least 1")
    elif peft.method == "bitfit":
        _check(cfg.model.bias, "peft.method=bitfit trains only bias terms, and this model has none (model.bias=false, "
                               "e.g. Llama); use peft=lora or peft=adapter")


def validate_generate(cfg) -> None:
    """gpt-generate's sampling settings (GenerateConfig)."""
    _check(bool(cfg.checkpoint), "checkpoint is required: checkpoint=<run.dir or checkpoint dir>")
    _check(cfg.max_new_tokens >= 0, f"max_new_tokens={cfg.max_new_tokens} must not be negative")
    _check(_finite(cfg.temperature) and cfg.temperature >= 0,
           f"temperature={cfg.temperature} must be a finite number >= 0 (0: greedy)")
    _check(cfg.top_k is None or cfg.top_k >= 1, f"top_k={cfg.top_k} must be at least 1, or null for no limit")
    _check(cfg.top_p is None or (_finite(cfg.top_p) and 0 < cfg.top_p <= 1),
           f"top_p={cfg.top_p} must be in (0, 1], or null")
    _check(_finite(cfg.repetition_penalty) and cfg.repetition_penalty > 0,
           f"repetition_penalty={cfg.repetition_penalty} must be a positive finite number (1: off)")
    _check(0 <= cfg.seed <= MAX_SEED, f"seed={cfg.seed} must be in [0, 2**32-1]")
    _one_of("device", cfg.device, ("auto", "cpu", "cuda"))
    _check(not (cfg.prompt_file and cfg.prompt), "give prompt=... or prompt_file=..., not both")


def validate_evaluate(cfg) -> None:
    """gpt-eval's settings (EvaluateConfig)."""
    _check(bool(cfg.checkpoint), "checkpoint is required: checkpoint=<run.dir, checkpoint dir or pointer file>")
    _one_of("split", cfg.split, ("val", "all"))
    _check(cfg.batch_size >= 1, f"batch_size={cfg.batch_size} must be at least 1")
    _check(cfg.iters is None or cfg.iters >= 1, f"iters={cfg.iters} must be at least 1, or null for one pass")
    _check(cfg.limit is None or cfg.limit > 0,
           f"limit={cfg.limit} must be positive (examples per task, or a fraction below 1), or null for every example")
    _one_of("device", cfg.device, ("auto", "cpu", "cuda"))
    validate_blend(cfg.data.blend)
