"""One live job per run.dir: `run.dir/run.lock`, held by global rank 0 from setup to exit.

Two jobs on one run.dir (a job submitted twice) would both resume, truncate each other's
metrics.jsonl and delete each other's saves in flight. The lock makes the second one stop in its
first seconds, with one line naming the owner.

- Taken atomically on any shared filesystem: the owner record (pid, host, job, start time) is
  written to a private file first, then hard-linked to `run.lock` (atomic and exclusive on NFS and
  Lustre, unlike flock/fcntl locks there); filesystems without hard links get O_CREAT|O_EXCL.
- One job, many ranks and nodes: only global rank 0 takes it; the outcome is broadcast, so every
  rank of a refused job stops with the same error (printed once) and no other rank touches it.
- Stale locks are taken over (one warning line): an owner on this machine whose process is gone
  (pid and start time checked, so a reused pid is not mistaken for it, or the machine rebooted); an owner of the same
  SLURM job or torchrun run on another node (an earlier start of this job: requeued or restarted);
  any other owner whose heartbeat stopped: the holder touches the file every HEARTBEAT_S seconds,
  and a lock on another host untouched for STALE_S is taken over.
- Released (deleted) on every exit that runs Python's `finally`; a kill -9 leaves a stale lock
  that the next start on this machine takes over at once.
"""

import errno
import json
import os
import socket
import stat
import threading
import time
import uuid
from pathlib import Path

from gpt import log
from gpt.errors import RunDirError
from gpt.parallel import collectives

logger = log.get("train")

LOCK = "run.lock"
HEARTBEAT_S = 30.0
"""How often the holder touches the lock (its mtime is the heartbeat other hosts judge by)."""
STALE_S = 300.0
"""A lock whose owner runs on another machine (no pid check possible) and whose heartbeat is older is stale."""
_BEING_WRITTEN_S = 10.0  # an unparsable lock younger than this may still be being written (O_EXCL path)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EACCES}


def this_job() -> str | None:
    """An id shared by every start of this job (SLURM job id, torchrun run id); None for a plain process."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":  # torchrun's default rdzv id is the literal "none"
        return f"torchrun:{run_id}"
    return None


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of `pid` from /proc (None: not Linux, or gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_record() -> dict:
    """Who this process is, as written into the lock."""
    st = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "job": this_job(), "token": uuid.uuid4().hex,
            "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace(),
            "start_time": st[1] if st else None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _alive(pid: int, start_time: int | None) -> bool:
    """Whether process `pid` of this machine still runs and is the one that wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except (OverflowError, ValueError):
        return False
    st = _proc_stat(pid)
    if st is None:
        return True
    state, started = st
    return state not in ("Z", "X") and (start_time is None or started == start_time)


class RunLock:
    """The lock file of one run.dir, as taken by this process."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.me = owner_record()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it ------------------------------------------------------------------------------
    def acquire(self) -> "RunLock":
        """Take the lock (taking over a stale one), or raise RunDirError naming the live owner."""
        try:
            self._acquire()
        except OSError as e:
            raise RunDirError(f"cannot take the run.dir lock {self.path}: {e.strerror or e} ({e.filename or self.path}); "
                              f"run.dir must be a writable directory") from None
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                break
            raw = self._raw()
            if raw is None:
                continue  # released in between: try again
            owner = _parse(raw)
            if owner is not None and owner.get("token") == self.me["token"]:
                break  # our link landed although the call reported failure (NFS retransmission)
            why = self._stale(owner)
            if why is None and owner is None:
                time.sleep(0.5)  # maybe being written: look again
                continue
            if why is None:
                raise RunDirError(self._busy(owner))
            if self._take_over(raw):
                logger.warning("run.dir lock %s: took it over from %s (%s)", self.path, _describe(owner), why)
                break
        else:
            raise RunDirError(f"{self.path}: could not take this run.dir's lock (another job is taking it at the same "
                              f"time, or it is unreadable); make sure only one job uses run.dir={self.path.parent}")

    def _create(self) -> bool:
        """Publish our record as the lock if there is none (atomic; False if a lock exists)."""
        text = json.dumps(self.me, indent=1) + "\n"
        tmp = self.path.with_name(f".{LOCK}.{self.me['token']}")
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in _NO_HARD_LINKS:
                    raise
            try:  # a filesystem without hard links
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _raw(self) -> bytes | None:
        return _read_raw(self.path)

    def _age(self) -> float:
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except OSError:
            return 0.0

    def _stale(self, owner: dict | None) -> str | None:
        """Why the current lock protects no live job (None: it does)."""
        age = self._age()
        if owner is None:  # not a record: being written (O_EXCL path) or garbage
            return f"an unreadable lock file, untouched for {age:.0f} s" if age > _BEING_WRITTEN_S else None
        same_machine = all(owner.get(k) == self.me[k] for k in ("host", "boot_id", "pid_ns"))
        if same_machine and isinstance(owner.get("pid"), int):
            if _alive(owner["pid"], owner.get("start_time")):
                return None
            return f"process {owner['pid']} is no longer running"
        if owner.get("host") == self.me["host"] and owner.get("boot_id") and self.me["boot_id"] \
                and owner["boot_id"] != self.me["boot_id"]:
            return "this machine has rebooted since it was taken"
        if owner.get("job") and owner.get("job") == self.me["job"]:
            return f"an earlier start of this job ({owner['job']}) on {owner.get('host')}"
        if age > STALE_S:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _take_over(self, seen: bytes) -> bool:
        """Replace the stale lock whose content is `seen` by ours; False if another job got there first."""
        aside = self.path.with_name(f".{LOCK}.stale-{self.me['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if _read_raw(aside) != seen:  # another job took the stale lock over meanwhile: give its lock back
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                return False
        finally:
            aside.unlink(missing_ok=True)
        return self._create()

    def _busy(self, owner: dict | None) -> str:
        run_dir = self.path.parent
        alive = f"last heartbeat {self._age():.0f} s ago" if owner is None or owner.get("host") != self.me["host"] \
            else "still running"
        return (f"run.dir={run_dir} is in use by another job: {self.path} is held by {_describe(owner)} ({alive}); "
                f"one run.dir holds one live job: wait for that job to end or stop it, or choose another run.dir "
                f"(if that job is really gone, delete {self.path})")

    # -- holding and releasing ------------------------------------------------------------------
    def _heartbeat(self) -> None:
        warned = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                owner = _parse(self._raw() or b"")
                if owner is not None and owner.get("token") == self.me["token"]:
                    os.utime(self.path)
                elif not warned:
                    logger.warning("run.dir lock %s is no longer this job's (now %s): another job may be writing "
                                   "into this run.dir", self.path, _describe(owner))
                    warned = True
            except OSError:
                pass  # a filesystem hiccup: the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            owner = _parse(self._raw() or b"")
            if owner is not None and owner.get("token") == self.me["token"]:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass


def _read_raw(path: Path) -> bytes | None:
    """The lock file's bytes (None: no such file); never opens anything but a regular file (a FIFO would block)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return f"<not a regular file: mode {st.st_mode:o}, inode {st.st_ino}>".encode()
        with open(path, "rb") as f:
            return f.read(64 << 10)
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict | None:
    try:
        owner = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: dict | None) -> str:
    if owner is None:
        return "an unreadable lock record"
    job = f", job {owner['job']}" if owner.get("job") else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}{job}, started {owner.get('started')}"


def acquire(run_dir: str | Path, ctx) -> RunLock | None:
    """Rank 0 takes run.dir's lock; every rank raises the same RunDirError if it is held (a collective).

    Returns the lock on rank 0 (release it at exit), None elsewhere.
    """
    lock, problem = None, None
    if ctx.rank == 0:
        try:
            lock = RunLock(run_dir).acquire()
        except RunDirError as e:
            problem = str(e)
    problem = collectives.broadcast_object(problem)
    if problem is not None:
        raise RunDirError(problem)
    return lock
