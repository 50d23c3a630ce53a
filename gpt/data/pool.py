"""Preprocessing workers: tasks go round-robin to N workers, each with its own bounded result queue,
and come back in task order, so memory is bounded (at most QUEUE_MESSAGES messages per worker wait
to be written) and the output does not depend on the number of workers. Worker processes send
token ids through a pipe as raw bytes, read by the main process straight into their array
(os.readv: no pickling, and none of the two extra copies of Connection.recv_bytes_into, whose reads
of at most a pipe buffer go into a BytesIO first: half the main process's CPU time on byte inputs).

workers=1 runs one worker thread in this process (two for `tokenizers` encoders, which release the
GIL), beside the writing main thread; workers > 1 are spawned processes (not forked: the parent
may already run tokenizer/Arrow threads, which fork would break). A worker that dies (out of
memory, killed) is noticed within a second: a one-line error, never a hang.
"""

import fcntl
import multiprocessing
import os
import queue
import threading
import traceback
from collections import deque
from typing import Iterable, Iterator, Tuple

import numpy as np

from gpt.data import encode
from gpt.data.inputs import Task
from gpt.errors import DataError, GptError

QUEUE_MESSAGES = 4
PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (Linux caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default): 16x fewer
reads, writes and wake-ups than the default 64 KiB."""
TASKS_AHEAD = 2
"""Tasks given to each worker ahead of the one being written."""
_DONE = "done"
_TOKENS = "tokens"


class _PipeSender:
    """A worker process's end of its result pipe: put() queues up to QUEUE_MESSAGES messages, a thread
    sends them (token ids as raw bytes), so the worker encodes ahead while the main process writes."""

    def __init__(self, conn):
        self.conn = conn
        self.queue = queue.Queue(QUEUE_MESSAGES)
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def put(self, message) -> None:
        self.queue.put(message)

    def _send(self) -> None:
        while True:
            message = self.queue.get()
            if message is None:
                return
            if isinstance(message, encode.Tokens):
                ids = np.ascontiguousarray(message.tokens)
                self.conn.send((_TOKENS, len(ids), ids.dtype.str, message.lengths, message.open_end))
                if len(ids):  # the header says how many bytes follow; they follow unframed
                    _write_all(self.conn.fileno(), memoryview(ids).cast("B"))
            else:
                self.conn.send(message)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()


def _write_all(fd: int, data: memoryview) -> None:
    done = 0
    while done < len(data):
        done += os.write(fd, data[done:])


def _read_into(fd: int, into: memoryview) -> None:
    done = 0
    while done < len(into):
        got = os.readv(fd, [into[done:]])
        if not got:
            raise EOFError
        done += got


def _enlarge(conn) -> None:
    try:
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):  # not Linux, or a lower limit: the default buffer works too
        pass


def _process_main(init_args, kwargs, tasks, conn) -> None:
    sender = _PipeSender(conn)
    try:
        _work(init_args, kwargs, tasks, sender)
    finally:
        sender.close()
        conn.close()


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
            pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
            for read, _ in pipes:
                _enlarge(read)
            self._results = [read for read, _ in pipes]
            self._procs = [ctx.Process(target=_process_main, args=(init_args, {"threads": threads}, t, write), daemon=True)
                           for t, (_, write) in zip(self._tasks, pipes)]
        for p in self._procs:
            p.start()
        if not self.threaded:
            for _, write in pipes:
                write.close()  # the workers hold the write ends: a dead worker is an EOF here

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
                message = self._results[slot].get(timeout=1.0) if self.threaded else self._receive(slot)
            except (queue.Empty, EOFError, OSError):
                if self.threaded or not self._procs[slot].is_alive():
                    if self.threaded and self._procs[slot].is_alive():
                        continue
                    raise DataError("a preprocessing worker died (out of memory? killed?); retry with fewer workers "
                                    f"(workers={self.n}) or a smaller task_bytes") from None
                continue
            if isinstance(message, tuple) and message[0] == "error":
                if message[2]:
                    raise DataError(message[1])
                raise RuntimeError(f"a preprocessing worker failed:\n{message[1]}")
            return message

    def _receive(self, slot: int):
        conn = self._results[slot]
        if not conn.poll(1.0):
            raise queue.Empty
        message = conn.recv()
        if isinstance(message, tuple) and message[0] == _TOKENS:
            _, n, dtype, lengths, open_end = message
            ids = np.empty(n, dtype=np.dtype(dtype))
            if n:
                _read_into(conn.fileno(), memoryview(ids).cast("B"))
            return encode.Tokens(ids, lengths, open_end)
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
