"""Saving: every rank writes what it holds, in parallel, into a temporary directory; rank 0 renames
it into place and only then moves the `latest` pointer, so an interrupted save is never picked up.

What a rank writes is its share of the training state (gpt/checkpoint/zero_state.py): its ZeRO
partition of every fp32 weight and Adam moment; without ZeRO, its 1/dp share of the replica it
holds; a parameter replicated over the tensor group by one tensor rank only (spread round robin).
No rank gathers anything it does not hold: the files are fragments, and meta.json's index says
how they tile every tensor (gpt/checkpoint/format.py).

A `Checkpointer` saves asynchronously, as torch.distributed.checkpoint's async_save with async
staging does: a writer thread first copies this rank's share into host memory (device-to-host on a
side stream; the buffers are kept for the next save) while training goes on with the next step's
forward and backward, which read but never change that state; the next optimizer step waits until
the copy is complete (a step pre-hook on the optimizer). Then the thread writes, checksums and fsyncs
the file, the ranks' writer threads hand their records to rank 0 over a process group of their own
(gloo), and rank 0 writes meta.json, renames the directory and moves `latest`. At most one save is
in flight: the next one, a signal stop and the end of the run wait for it. A process killed
mid-write leaves only a `.tmp-` directory.
"""

import contextlib
import functools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import torch

import gpt
from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint import zero_state
from gpt.checkpoint.writer import write_safetensors
from gpt.config.secrets import redact
from gpt.errors import CheckpointError
from gpt.parallel import collectives
from gpt.peft import is_peft_name

logger = log.get("checkpoint")


@functools.cache
def code_version() -> dict:
    """Package version plus the git commit of the source tree, when there is one."""
    version = {"gpt": gpt.__version__}
    try:
        src = Path(gpt.__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             check=False)
        if sha.returncode == 0:
            version["git"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return dict(version)


def partition_dim(p) -> int | None:
    """The dimension this parameter's tensor-parallel slices split along (None: replicated)."""
    return int(p.partition_dim) if getattr(p, "tensor_model_parallel", False) else None


def slice_shape(p) -> list[int]:
    """The shape of this rank's tensor-parallel slice (ZeRO-3 empties p itself)."""
    return list(p.ds_shape if hasattr(p, "ds_id") else p.shape)


def write_rank_file(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write one rank's safetensors file durably; returns its meta.json record (bytes, checksum)."""
    return write_safetensors(path, {k: v.contiguous() for k, v in tensors.items()},
                             {"format": fmt.FORMAT, "version": str(fmt.VERSION)})


def fragment_record(name: str, *, file: str, start: int, numel: int, tp_rank: int, tp_size: int, shape: list[int],
                    partition_dim: int | None, moments: list[str], trainable: bool) -> dict:
    """What a rank reports about one fragment it wrote (merged into meta.json by `merge_index`)."""
    return {"name": name, "file": file, "start": start, "numel": numel, "tp_rank": tp_rank, "tp_size": tp_size,
            "shape": shape, "partition_dim": partition_dim, "moments": moments, "trainable": trainable,
            "peft": is_peft_name(name)}


def merge_index(gathered: list[tuple[int, dict, list[dict]]]) -> tuple[dict, dict]:
    """Per-rank (rank, file record, fragment records) -> meta.json's `files` and `tensors`.

    Checks that the fragments of every piece tile it exactly (a save that lost or doubled a
    fragment is refused here, before it can be published).
    """
    files, merged = {}, {}
    for rank, record, frags in sorted(gathered, key=lambda g: g[0]):
        files[fmt.rank_file(rank)] = record
        for f in frags:
            entry = merged.setdefault(f["name"], {"shape": None, "partition_dim": f["partition_dim"],
                                                  "moments": f["moments"], "trainable": f["trainable"],
                                                  "peft": f["peft"], "pieces": {}})
            piece = entry["pieces"].setdefault(f["tp_rank"], {"tp_rank": f["tp_rank"], "tp_size": f["tp_size"],
                                                              "shape": f["shape"], "fragments": []})
            piece["fragments"].append({"file": f["file"], "start": f["start"], "numel": f["numel"]})
            if f["moments"] != entry["moments"]:
                raise CheckpointError(f"{f['name']}: ranks disagree on which Adam moments exist; not saved")
    for name, entry in merged.items():
        pieces = [entry["pieces"][r] for r in sorted(entry["pieces"])]
        dim = entry["partition_dim"]
        if [pc["tp_rank"] for pc in pieces] != list(range(pieces[0]["tp_size"])):
            raise CheckpointError(f"{name}: tensor-parallel pieces {[pc['tp_rank'] for pc in pieces]} were written, "
                                  f"not all {pieces[0]['tp_size']}; not saved")
        for pc in pieces:
            pc["fragments"].sort(key=lambda fr: fr["start"])
            end = 0
            for fr in pc["fragments"]:
                if fr["start"] != end:
                    raise CheckpointError(f"{name}: fragments of tensor rank {pc['tp_rank']} leave elements "
                                          f"{end}-{fr['start']} unwritten or written twice; not saved")
                end += fr["numel"]
            if end != fmt.numel(pc["shape"]):
                raise CheckpointError(f"{name}: fragments of tensor rank {pc['tp_rank']} cover {end} of "
                                      f"{fmt.numel(pc['shape'])} elements; not saved")
        shape = list(pieces[0]["shape"])
        if dim is not None:
            shape[dim] = sum(pc["shape"][dim] for pc in pieces)
        entry["shape"], entry["pieces"] = shape, pieces
    return files, dict(sorted(merged.items()))


def _even_share(numel: int, rank: int, size: int) -> tuple[int, int]:
    """(start, numel) of data rank `rank`'s share when `size` ranks split the writing of a replica."""
    chunk = -(-numel // size)
    start = min(rank * chunk, numel)
    return start, min(chunk, numel - start)


def why_failed(e: BaseException) -> str:
    """A failed write's reason in a few words: the OS error and its file, or the first line of the message."""
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class SaveFailed(CheckpointError):
    """A save did not complete (`step`, its directory `path`, `reason`); the previous checkpoints are untouched."""

    def __init__(self, step: int, path: Path, reason: str):
        super().__init__(f"saving checkpoint {path} failed ({reason}); the previous checkpoint is untouched")
        self.step, self.path, self.reason = step, path, reason


class Checkpointer:
    """Saves this run's checkpoints; `asynchronous`: writing overlaps training (at most one save in flight)."""

    def __init__(self, engine, *, asynchronous: bool = True, keep_buffers: bool = True):
        self.engine = engine
        self.asynchronous = asynchronous
        self.keep_buffers = keep_buffers  # host copies reused by the next save (allocating them is slow)
        self._buffers: dict[str, torch.Tensor] = {}
        self._group = None  # the writer threads' own process group (async only)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._final: Path | None = None  # the checkpoint being saved
        self._staged = threading.Event()  # set once this save's host copy is complete
        self._staged.set()
        self._hook = None  # the optimizer step pre-hook that waits for it
        self._hook_wait_s = 0.0
        self._call_s = 0.0
        self.last_stall_s = 0.0  # what the last save cost the training thread (save() + waiting for the copy)
        self.last_total_s = 0.0  # from save() until its checkpoint was published

    # ---- the training thread's part ------------------------------------------------------------
    def save(self, *, step: int, trainer_state: dict, config: dict, tokenizer, run_dir: str | Path,
             keep_last: int = 0, keep: tuple[str, ...] = (), sft_template: dict | None = None,
             best: bool = False) -> Path:
        """Start writing checkpoint `step_<step>` (a collective: call on every rank); returns its path,
        which exists once `wait()` returns. `best`: point `best` at it too, once it is in place."""
        self.wait()
        t0 = time.perf_counter()
        ctx = self.engine.ctx
        if self.asynchronous and self._group is None:
            self._group = collectives.new_cpu_group()  # collective: every rank saves at the same step
            self._hook = zero_state.base_optimizer(self.engine.optimizer).register_step_pre_hook(
                lambda *_: self._wait_staged())
        tensors, fragments, opt_steps = self._share()
        ready = None
        if ctx.device.type == "cuda":  # the side stream's copies start after what is queued now
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(ctx.device))
        root = fmt.checkpoints_dir(run_dir)
        final = root / fmt.step_dir_name(step)
        self._final = final
        meta = None
        if ctx.rank == 0:
            meta = {
                "format": fmt.FORMAT, "version": fmt.VERSION, "step": step, "optimizer_steps": opt_steps,
                "trainer": trainer_state, "config": redact(config),
                "layout": {"world": ctx.layout.world, "tensor": ctx.layout.tensor, "pipeline": ctx.layout.pipeline,
                           "data": ctx.layout.data, "context": ctx.layout.context,
                           "zero_stage": config.get("parallel", {}).get("zero_stage"),
                           "precision": config.get("train", {}).get("precision")},
                "rng": True, "loss_scaler": zero_state.loss_scaler_state(self.engine.optimizer),
                "tokenizer": redact(tokenizer.to_dict()) if tokenizer is not None else None,
                "sft_template": sft_template, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        job = functools.partial(self._write, root=root, final=final, tensors=tensors, ready=ready, fragments=fragments,
                                meta=meta, tokenizer=tokenizer, keep_last=keep_last, keep=(final.name, *keep),
                                best=best, t0=t0)
        if self.asynchronous:
            self._staged.clear()
            self._hook_wait_s = 0.0
            self._thread = threading.Thread(target=self._run, args=(job, step), name=f"checkpoint-{step}", daemon=True)
            self._call_s = time.perf_counter() - t0
            self._thread.start()
        else:
            self._run(job, step)
            self.wait()
            self.last_stall_s = time.perf_counter() - t0
        return final

    def _wait_staged(self) -> None:
        """Before the optimizer changes anything: the host copy of the save in flight must be complete."""
        if not self._staged.is_set():
            t0 = time.perf_counter()
            self._staged.wait()
            self._hook_wait_s += time.perf_counter() - t0

    def wait(self) -> None:
        """Block until the save in flight (if any) is published everywhere; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.last_stall_s = self._call_s + self._hook_wait_s
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Wait for the save in flight, report (not raise) its failure, free the host buffers."""
        try:
            self.wait()
        except Exception as e:  # noqa: BLE001 - the run is ending anyway; its error is the one to show
            logger.error("the last checkpoint was not saved: %s", e)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._buffers.clear()

    def _share(self) -> tuple[dict[str, torch.Tensor], list[dict], int]:
        """This rank's tensors (live views) and their fragment records, and Adam's step count."""
        engine = self.engine
        ctx, opt = engine.ctx, engine.optimizer
        tp, dp, dp_rank = ctx.layout.tensor, ctx.layout.data_context, ctx.dp_cp_rank  # context ranks hold replicas too
        opt_steps = zero_state.optimizer_steps(opt)
        with_moments = opt_steps > 0  # before the first step Adam has no state to save
        if with_moments:
            zero_state.link_optimizer_state(opt)
        file = fmt.rank_file(ctx.rank)
        tensors: dict[str, torch.Tensor] = {}
        fragments: list[dict] = []
        replicated = 0
        for name, p in engine.named_parameters():
            dim = partition_dim(p)
            if dim is None:  # the same on every tensor rank: written by one, round robin
                writer, replicated = replicated % tp, replicated + 1
                if writer != ctx.tp_rank:
                    continue
            held = zero_state.held(p)
            if held is None:
                continue
            start, numel = (_even_share(held.numel, dp_rank, dp) if held.replica else (held.start, held.numel))
            if numel == 0:
                continue
            lo = start - held.start
            tensors[name] = _fp32(zero_state.weight(p)[lo:lo + numel])
            moments = []
            for m in fmt.MOMENTS if with_moments else ():
                value = zero_state.moment(opt, p, m)
                if value is not None:
                    tensors[fmt.moment_key(name, m)] = _fp32(value[lo:lo + numel])
                    moments.append(m)
            fragments.append(fragment_record(
                name, file=file, start=start, numel=numel, tp_rank=ctx.tp_rank if dim is not None else 0,
                tp_size=tp if dim is not None else 1, shape=slice_shape(p), partition_dim=dim, moments=moments,
                trainable=p.requires_grad))
        tensors[fmt.RNG_CPU] = torch.get_rng_state()
        if ctx.device.type == "cuda":
            tensors[fmt.RNG_CUDA] = torch.cuda.get_rng_state(ctx.device)
        tp_state = engine.rng.get_state() if getattr(engine, "rng", None) is not None else None
        if tp_state is not None:
            tensors[fmt.RNG_TENSOR_PARALLEL] = tp_state
        return tensors, fragments, opt_steps

    def _stage(self, tensors: dict[str, torch.Tensor], ready) -> dict[str, torch.Tensor]:
        """Host copies of `tensors`: on a GPU, pinned buffers filled on a side stream once `ready`
        (an event on the training stream) has passed, all copies issued before one synchronisation."""
        device = self.engine.ctx.device
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        out = {}
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if stream is not None:
                stream.wait_event(ready)
            for key, t in tensors.items():
                buf = self._buffers.get(key)
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=device.type == "cuda")
                    if self.keep_buffers:
                        self._buffers[key] = buf
                buf.copy_(t, non_blocking=t.device.type == "cuda")
                out[key] = buf
        if stream is not None:
            stream.synchronize()
        return out

    # ---- the writer's part (a thread of its own when asynchronous) -----------------------------
    def _run(self, job, step: int) -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
            reason = why_failed(e) if isinstance(e, OSError) else f"{type(e).__name__}: {why_failed(e)}"
            self._error = e if isinstance(e, SaveFailed) else SaveFailed(step, self._final, reason)
        finally:
            self._staged.set()  # never leave the optimizer waiting

    def _write(self, *, root: Path, final: Path, tensors, ready, fragments, meta, tokenizer, keep_last, keep, best,
               t0):
        ctx, group = self.engine.ctx, self._group
        if self.asynchronous or ctx.device.type == "cuda":
            tensors = self._stage(tensors, ready)  # a sync save on the CPU writes the live tensors directly
        self._staged.set()
        tmp = root / f"{fmt.TMP_PREFIX}{final.name}"
        record, problem = None, None
        if ctx.rank == 0:
            try:
                root.mkdir(parents=True, exist_ok=True)
                for stale in root.glob(f"{fmt.TMP_PREFIX}step_*"):  # saves interrupted by a crash or kill
                    shutil.rmtree(stale, ignore_errors=True)
                tmp.mkdir()
            except OSError as e:
                problem = why_failed(e)
        collectives.barrier(group)  # every rank takes part, whatever failed, so that none waits forever
        try:
            record = write_rank_file(tmp / fmt.rank_file(ctx.rank), tensors) if problem is None else None
        except OSError as e:
            problem = f"{why_failed(e)}, writing rank {ctx.rank}'s file"
        del tensors
        gathered = collectives.gather_object((ctx.rank, record, fragments, problem), dst=0, group=group)
        if ctx.rank == 0:
            problem = next((g[3] for g in gathered if g[3]), None)
        if ctx.rank == 0 and problem is None:
            try:
                files, merged = merge_index([g[:3] for g in gathered])
                if tokenizer is not None:
                    tokenizer.save_files(tmp)
                meta = dict(meta, code=code_version(), files=files, tensors=merged)
                publish(tmp, final, meta)
                if best:
                    fmt.write_pointer(root.parent, fmt.BEST, meta["step"])
                prune(root, keep_last, keep=keep)
            except (OSError, CheckpointError) as e:
                problem = f"{why_failed(e)}, publishing it"
        problem = collectives.broadcast_object(problem, src=0, group=group)
        if problem is not None:
            raise SaveFailed(fmt.step_of(final), final, problem)
        self.last_total_s = time.perf_counter() - t0
        if ctx.rank == 0:
            paused = (self._call_s + self._hook_wait_s) if self.asynchronous else self.last_total_s
            logger.info("saved checkpoint %s (%.1f MB; training paused %.2fs, written in %.1fs)", final,
                        sum(r["bytes"] for r in files.values()) / 1e6, paused, self.last_total_s)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """Checkpoints hold fp32 (frozen low-precision weights are widened, exactly)."""
    return t if t.dtype == torch.float32 else t.float()


def save(engine, *, step: int, trainer_state: dict, config: dict, tokenizer, run_dir: str | Path,
         keep_last: int = 0, keep: tuple[str, ...] = (), sft_template: dict | None = None) -> Path:
    """Write checkpoint `step_<step>` of this run and return once it is published (a collective)."""
    return Checkpointer(engine, asynchronous=False, keep_buffers=False).save(
        step=step, trainer_state=trainer_state, config=config, tokenizer=tokenizer, run_dir=run_dir,
        keep_last=keep_last, keep=keep, sft_template=sft_template)


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
