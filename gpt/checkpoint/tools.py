"""Offline checkpoint tools behind `gpt-checkpoint`: inspect, verify, convert (one process, no DeepSpeed)."""

import json
import shutil
import time
from pathlib import Path

from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import TensorReader
from gpt.checkpoint.save import code_version, fragment_record, merge_index, write_rank_file
from gpt.errors import CheckpointError, ConfigError
from gpt.paths import refuse_overlap

logger = log.get("checkpoint")


def _find(path: str | Path, verify: bool) -> Path:
    ckpt = fmt.resolve(path, verify=verify)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint under {path} (expected a run.dir with checkpoints/, or a checkpoint directory)")
    return ckpt


def inspect(path: str | Path) -> dict:
    """What a checkpoint holds, for people: step, layout, model, tokenizer, sizes (file sizes checked)."""
    ckpt = _find(path, verify=False)
    meta = fmt.read_meta(ckpt)
    params = sum(_numel(e["shape"]) for e in meta["tensors"].values())
    return {"checkpoint": str(ckpt), "step": meta["step"], "optimizer_steps": meta.get("optimizer_steps"),
            "trainer": meta.get("trainer"), "layout": meta["layout"], "model": meta["config"].get("model"),
            "tokenizer": meta.get("tokenizer"), "code": meta.get("code"), "saved_at": meta.get("saved_at"),
            "files": len(meta["files"]), "bytes": sum(r["bytes"] for r in meta["files"].values()),
            "tensors": len(meta["tensors"]), "parameters": params,
            "optimizer_state": any(e.get("moments") for e in meta["tensors"].values())}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def verify(path: str | Path) -> dict:
    """Every file's checksum, and every indexed fragment present in its file with the recorded size."""
    ckpt = _find(path, verify=True)
    meta = fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    checked = 0
    for name, entry in meta["tensors"].items():
        keys = [name] + [fmt.moment_key(name, m) for m in entry.get("moments", [])]
        for pc in entry["pieces"]:
            for fr in pc["fragments"]:
                f = reader.file(fr["file"])
                for key in keys:
                    if key not in f.keys():
                        raise CheckpointError(f"{ckpt / fr['file']} lacks {key!r}, which meta.json lists there")
                    stored = list(f.get_slice(key).get_shape())
                    expected = pc["shape"] if fr.get("shaped") else [fr["numel"]]
                    if stored != expected:
                        raise CheckpointError(f"{ckpt / fr['file']}: {key!r} has shape {stored}, meta.json records "
                                              f"{expected}")
                    checked += 1
    return {"checkpoint": str(ckpt), "ok": True, "files": len(meta["files"]), "tensors_checked": checked}


def convert(path: str | Path, output: str | Path, *, tensor: int, weights_only: bool = False,
            overwrite: bool = False) -> Path:
    """Write `path`'s checkpoint to `output` split for tensor size `tensor` (rank r's file = tensor rank r's slices).

    Step, trainer state, config and tokenizer are kept; the RNG streams are not (a resume from the
    result reseeds them, as after any layout change).
    """
    ckpt = _find(path, verify=True)
    meta = fmt.read_meta(ckpt)
    if tensor < 1:
        raise ConfigError(f"tensor={tensor} must be at least 1")
    out = Path(output)
    refuse_overlap(out, [path, ckpt], input_key="checkpoint", error=ConfigError)
    if out.exists() and not overwrite:
        raise ConfigError(f"output={out} exists; choose another directory or set overwrite=true")
    reader = TensorReader(ckpt, meta)
    for name, e in meta["tensors"].items():
        if e["partition_dim"] is not None and e["shape"][e["partition_dim"]] % tensor:
            raise ConfigError(f"tensor={tensor} does not divide {name!r} ({e['shape'][e['partition_dim']]} rows)")
    tmp = out.with_name(f"{fmt.TMP_PREFIX}{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gathered = []
    replicated = [n for n, e in meta["tensors"].items() if e["partition_dim"] is None]
    for r in range(tensor):
        tensors, index = {}, []
        for name, e in meta["tensors"].items():
            dim = e["partition_dim"]
            if dim is None and replicated.index(name) % tensor != r:  # spread the replicated ones
                continue
            moments = [] if weights_only else e.get("moments", [])
            for key in [name] + [fmt.moment_key(name, m) for m in moments]:
                tensors[key] = reader.read(name, dim=dim, tp_rank=r, tp_size=tensor, key=key)
            shape = list(tensors[name].shape)
            for key in [name] + [fmt.moment_key(name, m) for m in moments]:
                tensors[key] = tensors[key].reshape(-1)  # one fragment: the whole piece
            index.append(fragment_record(name, file=fmt.rank_file(r), start=0, numel=fmt.numel(shape),
                                         tp_rank=r if dim is not None else 0, tp_size=tensor if dim is not None else 1,
                                         shape=shape, partition_dim=dim, moments=moments,
                                         trainable=e.get("trainable", True)))
        gathered.append((r, write_rank_file(tmp / fmt.rank_file(r), tensors), index))
    files, merged = merge_index(gathered)
    for extra in sorted(ckpt.iterdir()):  # tokenizer files
        if extra.name == fmt.META or extra.name in meta["files"] or extra.is_dir():
            continue
        if extra.is_symlink() or not extra.is_file():  # a link's target may be anywhere: never copied
            logger.warning("not copying %s: it is a symlink or not a regular file", extra)
            continue
        shutil.copy2(extra, tmp / extra.name)
    new = dict(meta, version=fmt.VERSION, files=files, tensors=merged, rng=False, code=code_version(),
               saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               layout=dict(meta["layout"], world=tensor, tensor=tensor, pipeline=1, data=1),
               converted_from={"checkpoint": str(ckpt), "layout": meta["layout"], "weights_only": weights_only})
    if weights_only:
        new["optimizer_steps"] = 0
    fmt.write_text_atomic(tmp / fmt.META, json.dumps(new, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


__all__ = ["inspect", "verify", "convert"]
