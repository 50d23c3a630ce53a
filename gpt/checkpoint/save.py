"""Saving: every rank writes its own file into a temporary directory; rank 0 renames it into place
and only then moves the `latest` pointer, so an interrupted save is never picked up."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import gpt
from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint import zero_state

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


def save(engine, *, step: int, trainer_state: dict, config: dict, tokenizer, run_dir: str | Path,
         keep_last: int = 0, keep: tuple[str, ...] = ()) -> Path:
    """Write checkpoint `step_<step>` of this run (a collective: call on every rank)."""
    t0 = time.perf_counter()
    ctx = engine.ctx
    root = fmt.checkpoints_dir(run_dir)
    final = root / fmt.step_dir_name(step)
    tmp = root / f".tmp-{fmt.step_dir_name(step)}"
    if ctx.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()

    # Parameters are gathered over the data-parallel group (collective), then written by one data
    # rank each, round robin, so that the writing is spread over the data-parallel ranks.
    zero_state.link_optimizer_state(engine.optimizer)
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    dp, dp_rank = ctx.layout.data, ctx.dp_rank
    for i, (name, p) in enumerate(engine.named_parameters()):
        value = zero_state.get_param(p)
        moments = {m: zero_state.get_moment(engine.optimizer, p, m) for m in fmt.MOMENTS} if p.requires_grad else {}
        if i % dp != dp_rank:
            continue
        tensors[name] = value.contiguous()
        for m, v in moments.items():
            if v is not None:
                tensors[fmt.moment_key(name, m)] = v.contiguous()
        dim = partition_dim(p)
        index[name] = {"file": fmt.rank_file(ctx.rank), "shape": list(value.shape), "partition_dim": dim,
                       "tp_rank": ctx.tp_rank if dim is not None else 0, "tp_size": ctx.layout.tensor if dim is not None else 1,
                       "moments": [m for m, v in moments.items() if v is not None], "trainable": p.requires_grad}
    tensors["__rng__.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and ctx.device.type == "cuda":
        tensors["__rng__.cuda"] = torch.cuda.get_rng_state(ctx.device)
    path = tmp / fmt.rank_file(ctx.rank)
    save_file(tensors, str(path), metadata={"format": fmt.FORMAT, "version": str(fmt.VERSION)})
    size = path.stat().st_size

    gathered = [None] * ctx.layout.world
    dist.all_gather_object(gathered, (ctx.rank, size, index))
    opt_steps = zero_state.optimizer_steps(engine.optimizer)
    if ctx.rank == 0:
        merged, files = {}, {}
        for rank, nbytes, idx in gathered:
            files[fmt.rank_file(rank)] = nbytes
            for name, info in idx.items():
                entry = merged.setdefault(name, {"shape": None, "partition_dim": info["partition_dim"],
                                                 "moments": info["moments"], "trainable": info["trainable"],
                                                 "pieces": []})
                entry["pieces"].append({"file": info["file"], "tp_rank": info["tp_rank"], "tp_size": info["tp_size"],
                                        "shape": info["shape"]})
        for entry in merged.values():
            entry["pieces"].sort(key=lambda x: x["tp_rank"])
            shape = list(entry["pieces"][0]["shape"])
            if entry["partition_dim"] is not None:
                shape[entry["partition_dim"]] = sum(pc["shape"][entry["partition_dim"]] for pc in entry["pieces"])
            entry["shape"] = shape
        if tokenizer is not None:
            tokenizer.save_files(tmp)
        meta = {
            "format": fmt.FORMAT, "version": fmt.VERSION, "step": step, "optimizer_steps": opt_steps,
            "trainer": trainer_state, "config": config,
            "layout": {"world": ctx.layout.world, "tensor": ctx.layout.tensor, "pipeline": ctx.layout.pipeline,
                       "data": ctx.layout.data, "zero_stage": config.get("parallel", {}).get("zero_stage")},
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
            "code": code_version(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files, "tensors": dict(sorted(merged.items())),
        }
        fmt.write_text_atomic(tmp / fmt.META, json.dumps(meta, indent=1))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fmt.write_text_atomic(root / fmt.LATEST, final.name + "\n")
        _prune(root, keep_last, keep=(final.name, *keep))
        logger.info("saved checkpoint %s (%.1f MB, %.1fs)", final, sum(files.values()) / 1e6, time.perf_counter() - t0)
    dist.barrier()
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _prune(root: Path, keep_last: int, keep: tuple[str, ...]) -> None:
    if keep_last <= 0:
        return
    done = fmt.complete_checkpoints(root)
    for old in done[:-keep_last]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
