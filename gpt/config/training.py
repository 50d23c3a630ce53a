"""Typed configuration of a training run (pretraining and fine-tuning share it).

Each section is a keyword-only dataclass registered with Hydra's ConfigStore (see `store.py`), so
unknown keys and wrong types are rejected by OmegaConf when the config is composed. Cross-field
rules live in `validate.py`, which runs once before any process group starts. The string under each
field is its documentation.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from gpt.config.text import text


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "tiny"
    """Preset name; informational (logged, saved in checkpoints, used for the HF export)."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention (query) heads; must be divisible by parallel.tensor."""
    n_kv_head: Optional[int] = None
    """Key/value heads for grouped-query attention; null means n_head (plain multi-head)."""
    n_embd: int = 128
    """Hidden size; must be divisible by n_head."""
    ffn_hidden: Optional[int] = None
    """MLP inner size; null means 4*n_embd for gelu, or the Llama rule (2/3*4*n_embd, rounded up to 256) for swiglu."""
    max_seq_len: int = 1024
    """Longest sequence the model accepts (size of the learned position table; RoPE cache length)."""
    vocab_size: Optional[int] = None
    """Tokenizer vocabulary; null means read it from the token shards' metadata."""
    vocab_multiple: int = 128
    """The embedding table is padded to a multiple of this (and of parallel.tensor); the pad rows are never predicted."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches."""
    bias: bool = True
    """Biases in linear layers and norms (GPT-2: true; Llama: false)."""
    norm: str = "layernorm"
    """layernorm | rmsnorm."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    activation: str = "gelu"
    """gelu (GPT-2 MLP) | swiglu (Llama MLP)."""
    position: str = "learned"
    """learned (GPT-2 absolute positions) | rope (rotary, Llama)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: str = "none"
    """none | linear | ntk | llama3: rescaled RoPE frequencies for a longer context than pretraining had (docs/parallelism.md, long sequences). With model.init_from, setting it extends the source: model.max_seq_len becomes the source's times model.rope_factor."""
    rope_factor: float = 1.0
    """Context extension factor of model.rope_scaling (new context / original context)."""
    rope_original_max_seq_len: Optional[int] = None
    """The pretraining context that llama3 scaling keeps high frequencies for; null: model.max_seq_len / model.rope_factor."""
    rope_low_freq_factor: float = 1.0
    """llama3 scaling: wavelengths above original context / this are divided by rope_factor."""
    rope_high_freq_factor: float = 4.0
    """llama3 scaling: wavelengths below original context / this are kept."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections use init_std/sqrt(2*n_layer)."""
    init_from: Optional[str] = text()
    """Start from these weights: a local Hugging Face directory (GPT-2 or Llama). Its config.json sets the architecture keys; its tokenizer must match the data's."""


@dataclass(kw_only=True)
class ParallelConfig:
    tensor: int = 1
    """Tensor-parallel size (Megatron column/row-parallel layers)."""
    pipeline: int = 1
    """Pipeline-parallel stages (DeepSpeed PipelineModule, 1F1B)."""
    pipeline_layers: Optional[List[int]] = None
    """Transformer blocks per pipeline stage (sums to model.n_layer); null splits them evenly."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 over the data-parallel group (data parallel = world / (tensor*pipeline*context)); with context parallelism the context ranks join it, as in Megatron."""
    context: int = 1
    """Context-parallel size: each sequence is split into 2*context chunks, rank i of the context group holding chunks i and 2*context-1-i; attention all-gathers keys and values over the group (docs/parallelism.md)."""
    sequence_parallel: bool = False
    """With parallel.tensor > 1: norms, dropout and the residual stream hold 1/tensor of the sequence on each rank (Megatron's sequence parallelism): all-gather before column-parallel linears, reduce-scatter after row-parallel ones."""


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate, reached after warmup."""
    min_lr: float = 1e-4
    """Floor of the cosine decay."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr over this many optimizer steps."""
    decay_steps: Optional[int] = None
    """Cosine decay ends (at min_lr) after this many steps; null means train.steps."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices and embeddings only (not biases or norms)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping (the norm is still logged)."""


@dataclass(kw_only=True)
class DataConfig:
    path: Optional[str] = text("data/stdlib")
    """Directory of token shards written by gpt-preprocess."""
    val_path: Optional[str] = text()
    """Separate validation shards; null holds out data.val_fraction of the documents of data.path."""
    val_fraction: float = 0.01
    """Fraction of documents held out for validation (at least one document) when val_path is null."""
    blend: Optional[List[Any]] = None
    """Weighted mixture [[weight, path], ...] used instead of data.path."""
    verify: bool = False
    """Check every shard's checksum at start-up (reads the whole corpus once); size, schema, version and counts are always checked."""
    allow_changed: bool = False
    """Resume even though the token shards differ from those the checkpoint was trained on (their metadata.json checksums); training continues at the same sample position of the new data."""


@dataclass(kw_only=True)
class TrainConfig:
    seq_len: int = 256
    """Tokens per sample (each sample holds seq_len+1 tokens: inputs and shifted labels)."""
    global_batch_size: int = 32
    """Samples per optimizer step over all data-parallel ranks."""
    micro_batch_size: int = 8
    """Samples per forward/backward on one rank; accumulation = global / (micro * data parallel)."""
    steps: int = 1000
    """Optimizer steps to train for (the learning-rate schedule spans them)."""
    stop_at: Optional[int] = None
    """Stop (with a checkpoint) after this step although train.steps is larger, as a preemption would; re-run to continue."""
    seed: int = 1234
    """Seeds weight init, data order and dropout."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (mixed precision keeps fp32 master weights)."""
    autocast: bool = True
    """With precision=bf16: torch.autocast over fp32 weights, gradients and optimizer state (true; faster on CPUs with bf16 kernels and on GPUs), or DeepSpeed's bf16 engine, bf16 weights and gradients with fp32 master copies (false)."""
    compile: Optional[bool] = None
    """torch.compile each transformer block (one compilation serves all blocks; the first step pays for it and logs its time); null: on where it pays, on CUDA without ZeRO-3 (on a CPU a cold compile costs more than short runs gain)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward to save memory."""
    check_memory: bool = True
    """Refuse to start when the estimated memory of the busiest rank (weights, gradients, optimizer state and a floor of the activations) exceeds what its device has free (GPU memory; on CPU the available RAM shared by the node's ranks); false starts anyway."""
    max_bad_steps: int = 5
    """Steps with a non-finite loss or gradient are skipped (no update); after this many in a row the run saves and stops (0: never stop)."""
    peak_flops: Optional[float] = None
    """Dense peak FLOP/s of one device for MFU; null looks the device up (or measures the CPU)."""
    check_replicas_every: int = 0
    """Every this many steps, check that the parameters every tensor rank holds whole (norms, row-parallel biases, positions) are bit-identical across the tensor group, and stop with an error naming the first that is not (0: never; Megatron's weight-hash check)."""


@dataclass(kw_only=True)
class EarlyStoppingConfig:
    patience: int = 0
    """Stop after this many evaluations without improvement; 0 disables early stopping."""
    min_delta: float = 0.0
    """An evaluation improves when val_loss < best - min_delta."""


@dataclass(kw_only=True)
class EvalConfig:
    every: int = 100
    """Evaluate on the validation split every this many steps (and at the end); 0 disables evaluation."""
    iters: int = 10
    """Global batches of validation data per evaluation (the same ones every time)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Stop when validation loss stops improving; the best checkpoint is kept as `best`."""
    tasks: List[str] = field(default_factory=list)
    """lm-evaluation-harness tasks (e.g. [hellaswag,arc_easy], or task YAML files) to run on the training model every eval.tasks_every steps; metrics as <task>/<metric> records."""
    tasks_every: int = 1000
    """Run eval.tasks every this many steps (and at the last step)."""
    tasks_limit: Optional[float] = None
    """Examples per task (a fraction when below 1); null runs every example."""
    tasks_path: Optional[str] = None
    """A directory of lm-eval task YAML files, searched before lm-eval's built-in tasks (your own tasks, or local copies for offline clusters)."""
    tasks_num_fewshot: Optional[int] = None
    """Few-shot examples per prompt; null uses each task's default."""


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = 0
    """Save every this many steps; 0 saves only at the end (and on SIGTERM/SIGUSR1)."""
    keep_last: int = 2
    """Keep this many recent checkpoints (the `best` one is kept in addition); 0 keeps all."""
    fallback: bool = False
    """If the latest checkpoint is corrupt, move it aside (<name>.corrupt) and resume from the previous good one with a warning."""
    verify: bool = True
    """Check every checkpoint file's checksum (recorded in meta.json) before resuming, spread over the ranks; false checks sizes only."""
    async_save: bool = True
    """Write checkpoints in the background: training pauses only while each rank copies its share of the state to host memory (kept between saves: as much host memory again as that share), then goes on while the files are written. false: training waits until the checkpoint is written."""


@dataclass(kw_only=True)
class WandbConfig:
    mode: str = "offline"
    """online | offline | disabled. Offline runs live in run.dir/wandb and can be synced later."""
    project: str = "gpt"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team); null uses the default of the logged-in user."""
    name: Optional[str] = None
    """Run name; null uses run.dir's last component."""


@dataclass(kw_only=True)
class LoggingConfig:
    every: int = 10
    """Print a progress line (loss, tokens/s, ETA) every this many steps (TensorBoard is flushed as often)."""
    tensorboard: bool = True
    """Write every metrics record as TensorBoard scalars under run.dir/tensorboard (`tensorboard --logdir runs`)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging."""


@dataclass(kw_only=True)
class RunConfig:
    dir: str = text("runs/default")
    """Everything of this run lives here: metrics.jsonl, checkpoints/, config.yaml, logs. Re-running with the same dir resumes."""


@dataclass(kw_only=True)
class TrainingConfig:
    """What gpt-pretrain composes from conf/pretrain.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    device: str = "auto"
    """auto (CUDA + NCCL when a GPU is visible, else CPU + gloo) | cpu | cuda."""
    deepspeed: Dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys passed through unchanged (batch sizes, ZeRO stage, precision and clipping are derived from the sections above)."""
