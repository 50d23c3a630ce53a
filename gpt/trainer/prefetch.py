"""The next step's micro-batches, read on a background thread while the current step computes.

The loader is a pure function of the consumed-sample count, so the step after `consumed` is known in
advance: `get(consumed)` returns that step's batches (waiting only if the thread is not done yet) and
starts reading the following ones. For a CUDA device the batches come in pinned memory, so that the
engine's `non_blocking` copy to the GPU is asynchronous. Asked for anything else (a resume, the
zero-weight step that creates Adam's state) it reads synchronously and carries on from there.
"""

from concurrent.futures import Future, ThreadPoolExecutor

from gpt.data import Batch


class Prefetcher:
    def __init__(self, loader, global_batch_size: int, *, pin_memory: bool):
        self.loader, self.gbs, self.pin = loader, global_batch_size, pin_memory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpt-prefetch")
        self._next: tuple[int, Future] | None = None

    def _read(self, consumed: int) -> list[Batch]:
        batches = self.loader.global_batch(consumed)
        if self.pin:
            batches = [Batch(b.tokens.pin_memory(), b.labels.pin_memory(), b.weights.pin_memory()) for b in batches]
        return batches

    def get(self, consumed: int) -> list[Batch]:
        """The micro-batches of the step that starts at `consumed` samples; prefetches the next step's."""
        if self._next is not None and self._next[0] == consumed:
            batches = self._next[1].result()
        else:
            if self._next is not None:
                self._next[1].cancel()
            batches = self._read(consumed)
        self._next = (consumed + self.gbs, self._pool.submit(self._read, consumed + self.gbs))
        return batches

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._next = None
