"""Libraries that call `torch.compile` when they are imported, imported without paying for it.

megatron-core (megatron/core/jit.py: `jit_fuser`) and DeepSpeed (its Muon optimizer, imported by
`deepspeed.initialize` to check the optimizer) decorate functions with `torch.compile` at import
time. The first such call imports torch._dynamo and inductor: 1-2 s of every rank's start-up on a
CPU, though gpt never calls those functions. Inside `deferred()`, `torch.compile` is
`compile_on_first_call`: it calls the real `torch.compile` when the decorated function is first
called, which is also when torch.compile itself compiles, so the functions behave exactly as before.
"""

import contextlib
import functools
import importlib

import torch

_torch_compile = torch.compile


def compile_on_first_call(model=None, **options):
    """torch.compile(model, **options), called when the result is first called (also as a decorator)."""
    if model is None:
        return functools.partial(compile_on_first_call, **options)
    compiled = None

    @functools.wraps(model)
    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = _torch_compile(model, **options)
        return compiled(*args, **kwargs)

    return call


@contextlib.contextmanager
def deferred():
    """`torch.compile` is compile_on_first_call inside (imports only: one thread, no compiling)."""
    torch.compile = compile_on_first_call
    try:
        yield
    finally:
        torch.compile = _torch_compile


def import_module(name: str):
    with deferred():
        return importlib.import_module(name)
