"""Preprocessing workers: tasks go round-robin to N workers, each with its own bounded result queue,
and come back in task order, so memory is bounded (at most QUEUE_MESSAGES messages per worker wait
to be written) and the output does not depend on the number of workers.

workers=1 runs one worker thread in this process (two for `tokenizers` encoders, which release the
GIL), beside the writing main thread; workers > 1 are spawned processes (not forked: the parent
may already run tokenizer/Arrow threads, which fork would break). A worker that dies (out of
memory, killed) is noticed within a second: a one-line error, never a hang.
"""

import multiprocessing
import os
import queue
import threading
import traceback
from collections import deque
from typing import Iterable, Iterator, Tuple

from gpt.data import encode
from gpt.data.inputs import Task
from gpt.errors import DataError, GptError

QUEUE_MESSAGES = 4
TASKS_AHEAD = 2
"""Tasks given to each worker ahead of the one being written."""
_DONE = "done"


class _Stopped(Exception):
    pass


def _work(init_args, kwargs, tasks, results, stop=None) -> None:
    """A worker: tasks in, messages out, (_DONE,) after each task, ("error", text) on failure.
    A thread stops when `stop` is set, even while its result queue is full."""

    def put(message) -> None:
        while stop is not None:
            if stop.is_set():
                raise _Stopped
            try:
                return results.put(message, timeout=0.1)
            except queue.Full:
                continue
        results.put(message)

    try:
        encode.init(*init_args, **kwargs)
        while True:
            task = tasks.get()
            if task is None or (stop is not None and stop.is_set()):
                return
            for message in encode.encode_task(task):
                put(message)
            put((_DONE,))
    except _Stopped:
        return
    except GptError as e:
        failure = ("error", str(e), True)
    except BaseException:  # a bug: keep its traceback for the main process to show
        failure = ("error", traceback.format_exc(), False)
    try:
        put(failure)
    except _Stopped:
        pass


class Workers:
    def __init__(self, workers: int, init_args: tuple, tokenizer):
        self.n = workers
        self.threaded = workers == 1
        if self.threaded:
            threads = 2 if getattr(tokenizer, "kind", "") in ("bpe", "hf") else 1
            self._tasks = [queue.Queue() for _ in range(threads)]
            self._results = [queue.Queue(QUEUE_MESSAGES) for _ in range(threads)]
            self._stop = threading.Event()
            self._procs = [threading.Thread(target=_work, args=(init_args, {"tokenizer": tokenizer}, t, r, self._stop),
                                            daemon=True) for t, r in zip(self._tasks, self._results)]
        else:
            ctx = multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // workers)  # no oversubscription of the cores
            self._tasks = [ctx.Queue() for _ in range(workers)]
            self._results = [ctx.Queue(QUEUE_MESSAGES) for _ in range(workers)]
            self._procs = [ctx.Process(target=_work, args=(init_args, {"threads": threads}, t, r), daemon=True)
                           for t, r in zip(self._tasks, self._results)]
        for p in self._procs:
            p.start()

    def run(self, tasks: Iterable[Task]) -> Iterator[Tuple[Task, object]]:
        """(task, message) for every message of every task, in task order; the last message of a task
        is its encode.TaskSummary."""
        slots = len(self._procs)
        pending: deque = deque()
        source = iter(tasks)
        submitted = 0

        def submit() -> bool:
            nonlocal submitted
            task = next(source, None)
            if task is None:
                return False
            self._tasks[submitted % slots].put(task)
            pending.append((task, submitted % slots))
            submitted += 1
            return True

        for _ in range(slots * TASKS_AHEAD):
            if not submit():
                break
        while pending:
            task, slot = pending.popleft()
            summary = None
            while True:
                message = self._get(slot)
                if isinstance(message, tuple) and message[0] == _DONE:
                    break
                if isinstance(message, encode.TaskSummary):
                    summary = message
                    continue
                yield task, message
            submit()
            yield task, summary

    def _get(self, slot: int):
        while True:
            try:
                message = self._results[slot].get(timeout=1.0)
            except queue.Empty:
                if not self._procs[slot].is_alive():
                    raise DataError("a preprocessing worker died (out of memory? killed?); retry with fewer workers "
                                    f"(workers={self.n}) or a smaller task_bytes") from None
                continue
            if isinstance(message, tuple) and message[0] == "error":
                if message[2]:
                    raise DataError(message[1])
                raise RuntimeError(f"a preprocessing worker failed:\n{message[1]}")
            return message

    def close(self) -> None:
        if self.threaded:
            self._stop.set()
        for t, p in zip(self._tasks, self._procs):
            if p.is_alive():
                t.put(None)
        for p in self._procs:
            p.join(timeout=5)
            if not self.threaded and p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and not self.threaded:
            for p in self._procs:  # do not wait for workers busy with tasks nobody will read
                p.terminate()
        self.close()
