"""gpt-preprocess: input text -> token shards + chunk index + metadata.json, in one process or as a job array.

The input is cut into units (see `gpt.data.inputs`); every unit becomes its own shards. `stage=all`
runs the pipeline (`gpt.data.pipeline`) here, writing into a temporary sibling directory renamed
into place when complete (metadata.json last). For many nodes (`slurm/preprocess.sh`), the stages
`tokenizer`, `encode` and `merge` of `gpt.data.parts` write and merge `<output>.parts/`.
"""

import os
from pathlib import Path
from typing import List

from gpt import log
from gpt.config.commands import PreprocessConfig
from gpt.data import parts
from gpt.data.format import dtype_for
from gpt.data.inputs import plan_units, resolve_inputs
from gpt.data.pipeline import build_tokenizer, check_documents, encode_units, report, source_of, spec_str
from gpt.data.tokenizer import KINDS
from gpt.data.writer import ShardWriter, atomic_output, check_output, finish_directory
from gpt.errors import ConfigError, DataError
from gpt.paths import refuse_overlap

_log = log.get("data.preprocess")
STAGES = ("all", "tokenizer", "encode", "merge")


def preprocess(cfg: PreprocessConfig) -> dict:
    """Run cfg.stage; returns the metadata written (stage=all/merge, or the encode task that merged), else {}."""
    _check_options(cfg)
    output = Path(os.path.expanduser(cfg.output))
    check_output(output, cfg.overwrite)  # before any work, not only when renaming
    # The output replaces its directory (overwrite=true) or joins the next run's input: never an input.
    refuse_overlap(output, _input_paths(cfg), input_key="input", error=ConfigError)
    if cfg.format == "sft":
        from gpt.data.sft import preprocess_sft

        return preprocess_sft(cfg, output, build_tokenizer)
    files = resolve_inputs(cfg.input, cfg.split)
    units = plan_units(files, cfg.unit_bytes, cfg.text_key)
    if not units:
        raise DataError(f"input={spec_str(cfg.input)} holds no input bytes")
    if cfg.stage == "tokenizer":
        parts.train_tokenizer_stage(cfg, output, files, units)
        return {}
    if cfg.stage == "encode":
        return parts.encode_stage(cfg, output, files, units)
    if cfg.stage == "merge":
        return parts.merge(cfg, output, files, units)
    total = sum(u.nbytes for u in units)
    _log.info("preprocessing %d files (%.1f MB) in %d unit(s) with %d worker(s), tokenizer %s",
              len(files), total / 1e6, len(units), cfg.workers, cfg.tokenizer.kind)
    with atomic_output(output, cfg.overwrite) as tmp:
        tokenizer = build_tokenizer(cfg, files, units)
        tokenizer.save_files(tmp)
        dtype = dtype_for(tokenizer.vocab_size)
        writer = ShardWriter(tmp, dtype, cfg.shard_tokens)
        try:
            stats = encode_units(cfg, units, tokenizer, writer, tmp)
            shards = writer.close()
        finally:
            writer.abort()
        report(stats)
        check_documents(cfg, stats)
        meta = finish_directory(tmp, tokenizer.to_dict(), dtype, shards, [(c, writer.granularity) for c in writer.chunks],
                                source_of(cfg, files, total, stats))
    _log.info("wrote %d documents, %d tokens in %d shard(s) to %s", meta["num_documents"], meta["num_tokens"],
              len(meta["shards"]), output)
    return meta


def _input_paths(cfg: PreprocessConfig) -> List[str]:
    """What input= (and an hf tokenizer.path) name on disk: paths, the matches of globs, the stdlib directory."""
    import glob
    import sysconfig

    specs = cfg.input if isinstance(cfg.input, (list, tuple)) else [cfg.input]
    found: List[str] = []
    for spec in (str(s) for s in specs if s not in (None, "")):
        if spec == "stdlib":
            found.append(sysconfig.get_paths()["stdlib"])
        elif any(c in spec for c in "*?["):
            found.extend(glob.glob(os.path.expanduser(spec), recursive=True))
        else:
            found.append(spec)
    if cfg.tokenizer.kind == "hf" and cfg.tokenizer.path:
        found.append(str(cfg.tokenizer.path))
    return found


def _check_options(cfg: PreprocessConfig) -> None:
    def one_of(key, value, options):
        if value not in options:
            raise ConfigError(f"{key}={value} is not one of {'|'.join(options)}")

    one_of("format", cfg.format, ("pretrain", "sft"))
    one_of("tokenizer.kind", cfg.tokenizer.kind, KINDS)
    one_of("split", cfg.split, ("blank_lines", "file"))
    one_of("on_error", cfg.on_error, ("fail", "skip"))
    one_of("stage", cfg.stage, STAGES)
    if not cfg.output:
        raise ConfigError("output is not set: pass output=<directory for the token shards>")
    for key in ("workers", "shard_tokens", "task_bytes", "unit_bytes", "tasks"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    if not 0 <= cfg.task < cfg.tasks:
        raise ConfigError(f"task={cfg.task} must be in [0, tasks={cfg.tasks})")
    if cfg.tokenizer.train_bytes is not None and cfg.tokenizer.train_bytes < 1:
        raise ConfigError(f"tokenizer.train_bytes={cfg.tokenizer.train_bytes} must be at least 1 (or null: all the input)")
    if cfg.tokenizer.kind == "hf" and not cfg.tokenizer.path:
        raise ConfigError("tokenizer.kind=hf needs tokenizer.path=<tokenizer.json>")
    if cfg.tokenizer.kind == "tiktoken" and not cfg.tokenizer.name:
        raise ConfigError("tokenizer.kind=tiktoken needs tokenizer.name=<encoding>, e.g. gpt2 or cl100k_base")
    if cfg.format == "sft" and cfg.stage != "all":
        raise ConfigError(f"format=sft runs in one process: stage={cfg.stage} is for format=pretrain")
    if cfg.stage == "tokenizer" and cfg.tokenizer.kind != "bpe":
        raise ConfigError(f"stage=tokenizer trains tokenizer.kind=bpe; tokenizer.kind={cfg.tokenizer.kind} needs no training")
