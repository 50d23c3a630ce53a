"""Saving: every rank writes its own file into a temporary directory; rank 0 renames it into place
and only then moves the `latest` pointer, so an interrupted save is never picked up."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import gpt
from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint import zero_state
from gpt.config.secrets import redact
from gpt.errors import CheckpointError
from gpt.peft import is_peft_name
from gpt.parallel import collectives

logger = log.get("checkpoint")


def code_version() -> dict:
    """Package version plus the git commit of the source tree, when there is one."""
    version = {"gpt": gpt.__version__}
    try:
        src = Path(gpt.__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            version["git"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def partition_dim(p) -> int | None:
    """The dimension this parameter's tensor-parallel slices split along (None: replicated)."""
    return int(p.partition_dim) if getattr(p, "tensor_model_parallel", False) else None


def write_rank_file(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write one safetensors file durably; returns its meta.json record (bytes, sha256)."""
    save_file(tensors, str(path), metadata={"format": fmt.FORMAT, "version": str(fmt.VERSION)})
    fmt.make_readable(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": fmt.sha256(path)}


def merge_index(gathered: list[tuple[int, dict, dict]]) -> tuple[dict, dict]:
    """Per-rank (rank, file record, tensor index) -> meta.json's `files` and `tensors`."""
    merged, files = {}, {}
    for rank, record, idx in sorted(gathered, key=lambda g: g[0]):
        files[fmt.rank_file(rank)] = record
        for name, info in idx.items():
            entry = merged.setdefault(name, {"shape": None, "partition_dim": info["partition_dim"],
                                             "moments": info["moments"], "trainable": info["trainable"],
                                             "peft": info.get("peft", False), "pieces": []})
            entry["pieces"].append({"file": info["file"], "tp_rank": info["tp_rank"], "tp_size": info["tp_size"],
                                    "shape": info["shape"]})
    for entry in merged.values():
        entry["pieces"].sort(key=lambda x: x["tp_rank"])
        shape = list(entry["pieces"][0]["shape"])
        if entry["partition_dim"] is not None:
            shape[entry["partition_dim"]] = sum(pc["shape"][entry["partition_dim"]] for pc in entry["pieces"])
        entry["shape"] = shape
    return files, dict(sorted(merged.items()))


def save(engine, *, step: int, trainer_state: dict, config: dict, tokenizer, run_dir: str | Path,
         keep_last: int = 0, keep: tuple[str, ...] = (), sft_template: dict | None = None) -> Path:
    """Write checkpoint `step_<step>` of this run (a collective: call on every rank)."""
    t0 = time.perf_counter()
    ctx = engine.ctx
    root = fmt.checkpoints_dir(run_dir)
    final = root / fmt.step_dir_name(step)
    tmp = root / f"{fmt.TMP_PREFIX}{fmt.step_dir_name(step)}"
    if ctx.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{fmt.TMP_PREFIX}step_*"):  # saves interrupted by a crash or kill
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    collectives.barrier()

    # Parameters are gathered over the data-parallel group (collective), then written by one data
    # rank each, round robin, so that the writing is spread over the data-parallel ranks.
    opt_steps = zero_state.optimizer_steps(engine.optimizer)
    with_moments = opt_steps > 0  # before the first step Adam has no state to save
    if with_moments:
        zero_state.link_optimizer_state(engine.optimizer)
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    dp, dp_rank = ctx.layout.data_context, ctx.dp_cp_rank  # context ranks hold the same weights: they share the writing
    for i, (name, p) in enumerate(engine.named_parameters()):
        value = zero_state.get_param(p)
        moments = {m: zero_state.get_moment(engine.optimizer, p, m) for m in fmt.MOMENTS} \
            if p.requires_grad and with_moments else {}
        dim = partition_dim(p)
        if i % dp != dp_rank or (dim is None and ctx.tp_rank != 0):  # replicated: tensor rank 0 writes it
            continue
        tensors[name] = value.contiguous()
        for m, v in moments.items():
            if v is not None:
                tensors[fmt.moment_key(name, m)] = v.contiguous()
        index[name] = {"file": fmt.rank_file(ctx.rank), "shape": list(value.shape), "partition_dim": dim,
                       "tp_rank": ctx.tp_rank if dim is not None else 0, "tp_size": ctx.layout.tensor if dim is not None else 1,
                       "moments": [m for m, v in moments.items() if v is not None], "trainable": p.requires_grad,
                       "peft": is_peft_name(name)}
    tensors[fmt.RNG_CPU] = torch.get_rng_state()
    if ctx.device.type == "cuda":
        tensors[fmt.RNG_CUDA] = torch.cuda.get_rng_state(ctx.device)
    record = write_rank_file(tmp / fmt.rank_file(ctx.rank), tensors)
    del tensors

    gathered = collectives.all_gather_object((ctx.rank, record, index))
    if ctx.rank == 0:
        files, merged = merge_index(gathered)
        if tokenizer is not None:
            tokenizer.save_files(tmp)
        meta = {
            "format": fmt.FORMAT, "version": fmt.VERSION, "step": step, "optimizer_steps": opt_steps,
            "trainer": trainer_state, "config": redact(config),
            "layout": {"world": ctx.layout.world, "tensor": ctx.layout.tensor, "pipeline": ctx.layout.pipeline,
                       "data": ctx.layout.data, "context": ctx.layout.context, "zero_stage": config.get("parallel", {}).get("zero_stage"),
                       "precision": config.get("train", {}).get("precision")},
            "rng": True,
            "tokenizer": redact(tokenizer.to_dict()) if tokenizer is not None else None,
            "sft_template": sft_template,
            "code": code_version(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files, "tensors": merged,
        }
        publish(tmp, final, meta)
        prune(root, keep_last, keep=(final.name, *keep))
        logger.info("saved checkpoint %s (%.1f MB, %.1fs)", final,
                    sum(r["bytes"] for r in files.values()) / 1e6, time.perf_counter() - t0)
    collectives.barrier()
    return final


def publish(tmp: Path, final: Path, meta: dict) -> None:
    """meta.json last inside the temp dir, then rename the dir into place, then move `latest`."""
    fmt.write_text_atomic(tmp / fmt.META, json.dumps(meta, indent=1))
    fmt.fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after resuming from an older checkpoint)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fmt.fsync_dir(final.parent)
    fmt.write_text_atomic(final.parent / fmt.LATEST, final.name + "\n")


def _pointer_or_none(root: Path, pointer: str) -> str | None:
    """For pruning: an unreadable pointer protects nothing (it names no checkpoint) and must not fail a save."""
    try:
        return fmt.read_pointer(root, pointer)
    except CheckpointError:
        return None


def prune(root: Path, keep_last: int, keep: tuple[str, ...] = ()) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; never one named by `latest` or `best`."""
    if keep_last <= 0:
        return []
    protected = set(keep) | {name for p in fmt.POINTERS if (name := _pointer_or_none(root, p))}
    removed = []
    for old in fmt.complete_checkpoints(root)[:-keep_last]:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed
