"""Run-time check of the collectives rule, for the processes the tests start (never imported by gpt/).

The rule (gpt/parallel/collectives.py): every collective of our code goes through that module, which
puts each tensor on `collectives.device(group)` (the rank's CUDA device under NCCL; NCCL refuses
anything else). tests/parallel/test_collectives.py checks the source; this checks what really runs,
including calls the source check cannot see (a collective reached through `getattr`, through
`distributed_c10d`, through `deepspeed.comm`, or a tensor the gateway forgot to move).

`install()` (run by sitecustomize.py in this directory, which tests/helpers.py puts first on every
subprocess's PYTHONPATH) wraps each torch.distributed collective right after torch.distributed is
imported. At each call the guard looks at the code that called it, skipping DeepSpeed's thin
`deepspeed.comm` layer:
- in the gateway (gpt/parallel/collectives.py): every tensor entering the collective must be on the
  gateway's own `device(group)`;
- anywhere else in gpt/: refused (the call should have gone through the gateway);
- anywhere else (DeepSpeed, megatron-core, torch itself, the tests): allowed; those libraries manage
  their own tensors and devices.
A violation prints one line starting with MARKER to stderr and raises CollectiveGuardError; the test
helpers fail any run whose output holds MARKER, even where the exception was caught.

Which files count as ours and which as the gateway can be changed with GPT_COLLECTIVE_GUARD_OURS and
GPT_COLLECTIVE_GUARD_GATEWAYS (os.pathsep-separated paths; the proof test uses them for its bad code).
"""

import os
import sys
import threading

MARKER = "collective guard:"

# torch.distributed's collectives (what tests/parallel/test_collectives.py also looks for in the source).
COLLECTIVES = frozenset({
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast", "broadcast_object_list",
    "barrier", "reduce", "reduce_scatter", "reduce_scatter_tensor", "send", "recv", "isend", "irecv",
    "batch_isend_irecv", "all_to_all", "all_to_all_single", "gather", "scatter", "gather_object",
    "scatter_object_list", "monitored_barrier", "all_reduce_coalesced", "all_gather_coalesced", "send_object_list",
    "recv_object_list",
})
# Pickled objects, not tensors, go in (torch puts them on the right device itself).
OBJECT_COLLECTIVES = frozenset(n for n in COLLECTIVES if "object" in n)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CollectiveGuardError(RuntimeError):
    pass


def _paths(variable: str, default: list[str]) -> tuple[str, ...]:
    value = os.environ.get(variable)
    paths = value.split(os.pathsep) if value else default
    return tuple(os.path.realpath(p) for p in paths if p)


OURS = _paths("GPT_COLLECTIVE_GUARD_OURS", [os.path.join(REPO, "gpt")])
GATEWAYS = _paths("GPT_COLLECTIVE_GUARD_GATEWAYS", [os.path.join(REPO, "gpt", "parallel", "collectives.py")])
_PASS_THROUGH = (os.sep + os.path.join("deepspeed", "comm") + os.sep,)  # DeepSpeed's wrappers around torch.distributed

_state = threading.local()
_real_paths: dict[str, str] = {}


def _real(filename: str) -> str:
    path = _real_paths.get(filename)
    if path is None:
        path = _real_paths[filename] = os.path.realpath(filename)
    return path


def _is_ours(path: str) -> bool:
    return any(path == p or path.startswith(p + os.sep) for p in OURS)


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _refuse(message: str):
    # One write of the whole line: ranks share torchrun's stderr pipe, and print() writes the text and
    # the newline separately, so two ranks' refusals could interleave into one line.
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f"{MARKER} {message}\n".encode())
    raise CollectiveGuardError(message)


def _check(name: str, signature, args, kwargs, frame) -> None:
    while frame is not None and any(s in frame.f_code.co_filename for s in _PASS_THROUGH):
        frame = frame.f_back
    if frame is None:
        return
    path = _real(frame.f_code.co_filename)
    where = f"{os.path.relpath(path, REPO)}:{frame.f_lineno} ({frame.f_code.co_name})"
    if path in GATEWAYS:
        if name in OBJECT_COLLECTIVES:
            return
        try:
            bound = signature.bind(*args, **kwargs).arguments
        except TypeError:
            return  # torch itself will refuse the call
        if name == "batch_isend_irecv":
            pairs = [(op.tensor, op.group) for op in bound["p2p_op_list"]]
        else:
            pairs = [(t, bound.get("group")) for v in bound.values() for t in _tensors(v)]
        device = frame.f_globals["device"]  # the gateway's own notion of where its collectives run
        for tensor, group in pairs:
            expected = device(group)
            if tensor.device != expected:
                _refuse(f"torch.distributed.{name} at {where} got a tensor on {tensor.device}, but this rank's "
                        f"collectives run on {expected} (NCCL takes only the rank's CUDA device)")
    elif _is_ours(path):
        _refuse(f"torch.distributed.{name} called directly at {where}; call it through gpt.parallel.collectives")


def _guarded(name: str, fn):
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        depth = getattr(_state, "depth", 0)
        if depth == 0:  # torch's own collectives inside a collective are its business
            _check(name, signature, args, kwargs, sys._getframe(1))
        _state.depth = depth + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _state.depth = depth

    guarded.__collective_guard__ = True
    return guarded


def patch(dist) -> None:
    """Wrap every collective of the torch.distributed module `dist` (and the same function in
    distributed_c10d, where `from torch.distributed.distributed_c10d import ...` would find it)."""
    if not dist.is_available():
        return
    from torch.distributed import distributed_c10d as c10d

    for name in sorted(COLLECTIVES):
        fn = getattr(dist, name, None)
        if fn is None or getattr(fn, "__collective_guard__", False):
            continue
        wrapped = _guarded(name, fn)
        setattr(dist, name, wrapped)
        if getattr(c10d, name, None) is fn:
            setattr(c10d, name, wrapped)


class _PatchAfterImport:
    """A meta-path finder that lets torch.distributed import as usual, then patches it (so that
    processes which never import torch, such as the launcher's dry run, never pay for it)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "torch.distributed":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


class _Loader:
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def install() -> None:
    if "torch.distributed" in sys.modules:
        patch(sys.modules["torch.distributed"])
    elif not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
