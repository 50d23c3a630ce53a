"""Typed configuration of the commands other than training: preprocess and generate."""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from gpt.config.text import text
from gpt.config.training import DataConfig


@dataclass(kw_only=True)
class TokenizerConfig:
    kind: str = "byte"
    """byte (ids 0-255 are bytes, specials after) | bpe (train one on the input) | hf (a tokenizer.json) | tiktoken (an encoding by name)."""
    vocab_size: int = 8192
    """Vocabulary size of a BPE trained on the input (tokenizer.kind=bpe)."""
    path: Optional[str] = text()
    """tokenizer.json to use (tokenizer.kind=hf)."""
    name: Optional[str] = None
    """tiktoken encoding name, e.g. gpt2 or cl100k_base (tokenizer.kind=tiktoken), read from tiktoken's local cache (TIKTOKEN_CACHE_DIR); never downloaded."""
    eod_token: Optional[str] = text()
    """End-of-document token of a bpe/hf tokenizer; null means <|endoftext|> for bpe, and for hf the first of <|endoftext|>, <|end_of_text|>, </s>, <eos> it has. Added to the vocabulary if missing."""
    train_bytes: Optional[int] = 1_000_000_000
    """tokenizer.kind=bpe: train on a deterministic sample of about this many bytes of the input, spread evenly over every file (null: all of it). The trainer's memory grows with the sample (about 1-2 GB for 1 GB of web text)."""


@dataclass(kw_only=True)
class SftConfig:
    """How instruction records become one training document each (gpt-preprocess format=sft)."""

    prompt_key: str = text("prompt")
    """Field of a prompt/response record holding the prompt (the user's turn)."""
    response_key: str = text("response")
    """Field of a prompt/response record holding the response (trained on)."""
    messages_key: str = text("messages")
    """Field of a chat record: a list of {"role": system|user|assistant, "content": text}; every assistant turn is trained on."""
    system_prefix: str = text("### System:\n")
    """Written before a system message (not trained on)."""
    user_prefix: str = text("### User:\n")
    """Written before a user message / the prompt (not trained on)."""
    assistant_prefix: str = text("### Assistant:\n")
    """Written before an assistant message / the response (not trained on: generation prompts end with it)."""
    separator: str = text("\n\n")
    """Written after every message but the last; after an assistant message it is trained on (it ends the turn)."""


@dataclass(kw_only=True)
class PreprocessConfig:
    """What gpt-preprocess composes from conf/preprocess.yaml."""

    input: Any = text()
    """A file, directory, glob, `stdlib` (this Python's standard library sources), or a list of those."""
    format: str = "pretrain"
    """pretrain (plain text documents, every token trained on) | sft (instruction records from .jsonl/.jsonl.gz/.parquet, with a loss mask: only response tokens are trained on)."""
    sft: SftConfig = field(default_factory=SftConfig)
    """format=sft: record fields and the template that joins the turns."""
    output: Optional[str] = text()
    """Directory to write the token shards and metadata.json into."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How text becomes token ids."""
    text_key: str = text("text")
    """Field holding the text in jsonl/parquet records."""
    split: str = "blank_lines"
    """How text files become documents: blank_lines (paragraphs) | file (one document per file). .py files are always one document per file."""
    shard_tokens: int = 64_000_000
    """Start a new shard file after the document that brings the current one to this many tokens."""
    workers: int = 1
    """Worker processes for reading and tokenising (one core each; bpe/hf encoders also use threads); the output is identical whatever the number."""
    task_bytes: int = 1_048_576
    """Input bytes per piece of work given to a worker (files are cut at document boundaries); the output does not depend on it."""
    unit_bytes: int = 1 << 30
    """Input bytes per unit: consecutive input (large files cut at document boundaries) that becomes its own shards, closed at shard_tokens and at the unit's end. Job-array tasks divide the units, so the output depends on unit_bytes but never on the number of tasks."""
    stage: str = "all"
    """all (everything in this process) | tokenizer (train the tokenizer.kind=bpe tokenizer into <output>.parts/, before an array) | encode (array task `task` of `tasks`: its slice of the units into <output>.parts/; the last task to finish merges) | merge (<output>.parts/ -> output; refuses while a unit is missing or damaged)."""
    task: int = 0
    """stage=encode: which slice of the units this task writes (0-based; slurm/preprocess.sh sets it from SLURM_ARRAY_TASK_ID)."""
    tasks: int = 1
    """stage=encode: the number of slices the units are divided into (the array's size)."""
    on_error: str = "fail"
    """fail (stop at the first bad record, naming file:line) | skip (skip and report bad records)."""
    overwrite: bool = False
    """Replace an existing non-empty output directory."""


@dataclass(kw_only=True)
class GenerateConfig:
    """What gpt-generate composes from conf/generate.yaml."""

    checkpoint: Optional[str] = text()
    """A run.dir (its latest checkpoint) or one checkpoint directory."""
    prompt: str = text("")
    """Text to continue."""
    max_new_tokens: int = 200
    """Tokens to sample after the prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy decoding."""
    top_k: Optional[int] = None
    """Sample only among the k most likely tokens."""
    top_p: Optional[float] = None
    """Sample only among the smallest set of tokens whose probability reaches p (nucleus)."""
    seed: int = 1234
    """Sampling seed."""
    device: str = "auto"
    """auto | cpu | cuda."""
    stop: List[str] = text(factory=list)
    """Stop when any of these strings appears in the generated text."""
    prompt_file: Optional[str] = text()
    """Continue every prompt of this file instead (one per line, or jsonl with a `prompt` field); prints one JSON line per prompt."""
    repetition_penalty: float = 1.0
    """Divide the logits of tokens already in the text by this (>1 discourages repeats; 1 is off)."""
    use_cache: bool = True
    """Reuse attention keys/values across steps (same output, much faster)."""
    chat: bool = False
    """Wrap each prompt in the template of the instruction data the checkpoint was fine-tuned on (gpt-preprocess format=sft; recorded in the checkpoint), i.e. `### User:\n<prompt>\n\n### Assistant:\n` by default, so the model answers it."""
    merge_peft: bool = True
    """A LoRA fine-tuned checkpoint: fold the factors into the weights on load (same output up to fp32 round-off, no extra matmuls per token); false runs the LoRA branches as in training."""


@dataclass(kw_only=True)
class EvaluateConfig:
    """What gpt-eval composes from conf/eval.yaml."""

    checkpoint: Optional[str] = text()
    """A run.dir (its latest checkpoint), a checkpoint directory, or a `latest`/`best` pointer file."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path=None))
    """The shards to evaluate on; null fields fall back to the checkpoint's training data config."""
    split: str = "val"
    """val (the held-out documents, as in training) | all (every document of data.path)."""
    batch_size: int = 8
    """Samples per forward pass."""
    iters: Optional[int] = None
    """Batches to evaluate; null is one pass over the split."""
    device: str = "auto"
    """auto | cpu | cuda."""
    tasks: List[str] = field(default_factory=list)
    """lm-evaluation-harness tasks (e.g. [hellaswag,arc_easy], or paths of task YAML files) to run instead of the validation loss; prints their metrics as one JSON line."""
    tasks_path: Optional[str] = None
    """A directory of lm-eval task YAML files (your own tasks, or local copies of the standard ones for offline clusters), searched before lm-eval's built-in tasks."""
    limit: Optional[float] = None
    """Examples per task (a fraction when below 1); null evaluates every example."""
    num_fewshot: Optional[int] = None
    """Few-shot examples per prompt; null uses each task's default."""
    log_to_run: bool = False
    """Also append the task results, at the checkpoint's step, to its run's metrics.jsonl, TensorBoard and W&B (as the run's config has them)."""


@dataclass(kw_only=True)
class PlotConfig:
    """What gpt-plot composes from conf/plot.yaml."""

    runs: List[str] = field(default_factory=list)
    """run.dirs to draw, one line each (on the command line they are positional: gpt-plot runs/a runs/b)."""
    output: str = "curves.png"
    """The PNG to write."""
    dpi: int = 100
    """Resolution of the PNG (the figure is 16 x 7 inches)."""


@dataclass(kw_only=True)
class ExportConfig:
    """What gpt-export composes from conf/export.yaml."""

    checkpoint: Optional[str] = text()
    """A run.dir (its latest checkpoint) or one checkpoint directory, of any parallel layout."""
    output: Optional[str] = text()
    """Directory to write the exported model into (created; written beside it and renamed into place)."""
    format: str = "hf"
    """hf: a Hugging Face transformers directory (GPT2LMHeadModel or LlamaForCausalLM, safetensors, fast tokenizer)."""
    merge_peft: bool = False
    """A fine-tuned checkpoint: true folds LoRA into the base weights (a plain model; BitFit is always plain); false writes the plain base model to <output>/base and the trained PEFT tensors on their own in <output> (LoRA in the `peft` library's format)."""
    dtype: str = "fp32"
    """fp32 | bf16 | fp16: the dtype of the exported weights (checkpoints hold fp32)."""
    overwrite: bool = False
    """Replace an existing non-empty output directory."""


@dataclass(kw_only=True)
class CheckpointToolConfig:
    """What gpt-checkpoint composes from conf/checkpoint.yaml."""

    command: Optional[str] = None
    """inspect (print a summary) | verify (check every file's checksum and tensor index) | convert (re-split for another tensor size)."""
    checkpoint: Optional[str] = text()
    """A run.dir (its latest checkpoint) or one checkpoint directory."""
    output: Optional[str] = text()
    """convert: the checkpoint directory to write (any checkpoint loads at any layout; this only pre-splits the files)."""
    tensor: int = 1
    """convert: tensor-parallel size the output's files are split for (one file per tensor rank)."""
    weights_only: bool = False
    """convert: leave out the Adam moments (a smaller checkpoint for inference, export or a fresh fine-tune)."""
    overwrite: bool = False
    """convert: replace an existing output directory."""
