"""Random streams under tensor parallelism: Megatron's rule, on CPU and GPU alike.

Every rank has two streams:

- the *default* stream (torch's own generator of the rank's device, and the CPU one): the same
  seed on every tensor rank of a model replica, so dropout on replicated activations (embedding,
  residual branches after a row-parallel all-reduce, LoRA dropout on a replicated input) draws the
  same mask everywhere and the replicated hidden states and weights stay bit-identical;
- the *tensor-parallel* stream, seeded differently on every tensor rank and used inside
  `fork()`: dropout on split activations (attention probabilities of this rank's heads, LoRA
  dropout on a row-parallel layer's split input) draws independent masks, as the one-process model
  draws independent masks for the other heads.

This is megatron-core's `model_parallel_cuda_manual_seed` / `get_cuda_rng_tracker().fork()`
(seed + 2718 + tensor rank for the second stream; data-parallel ranks share both, as in Megatron),
done with torch's device-generic generators so it also runs on CPU. Activation checkpointing must
replay the tensor-parallel stream too: `recompute_contexts` is the `context_fn` of
`torch.utils.checkpoint.checkpoint` that does it (torch replays the default streams itself).
"""

import contextlib

import torch

TENSOR_PARALLEL_OFFSET = 2718  # megatron-core's offset of the tensor-parallel seed


def default_generator(device: torch.device) -> torch.Generator:
    """The generator random ops on `device` draw from when given none."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class RNGTracker:
    """The tensor-parallel stream of one rank, entered with `fork()` (one object per process)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._state: torch.Tensor | None = None  # None: never seeded (eval-only models): fork() changes nothing

    def seed(self, seed: int, *, tp_rank: int) -> None:
        """Seed both streams: the default one with `seed` (the same on every tensor rank), the
        tensor-parallel one with seed + 2718 + tp_rank."""
        torch.manual_seed(seed)  # CPU and every CUDA device
        gen = torch.Generator(self.device)
        gen.manual_seed(seed + TENSOR_PARALLEL_OFFSET + tp_rank)
        self._state = gen.get_state()

    def get_state(self) -> torch.Tensor | None:
        return self._state

    def set_state(self, state: torch.Tensor | None) -> None:
        self._state = state

    @contextlib.contextmanager
    def fork(self):
        """Random ops inside draw from the tensor-parallel stream; the default stream is left as it was."""
        if self._state is None:
            yield
            return
        gen = default_generator(self.device)
        outer = gen.get_state()
        gen.set_state(self._state)
        try:
            yield
        finally:
            self._state = gen.get_state()
            gen.set_state(outer)

    def recompute_contexts(self):
        """`context_fn` for torch.utils.checkpoint: recomputation replays this stream from where the
        forward started (and leaves it where it was before the recomputation)."""
        start = self._state

        @contextlib.contextmanager
        def replay():
            current, self._state = self._state, start
            try:
                yield
            finally:
                self._state = current

        return contextlib.nullcontext(), replay()


def reseed_value(seed: int, step: int, pp_rank: int) -> int:
    """The default-stream seed after a resume onto another layout: a function of what every tensor
    rank of a stage shares (the run's seed, the step, the pipeline stage), never of the global rank."""
    return seed * 1_000_003 + step * 1009 + 100 * pp_rank
