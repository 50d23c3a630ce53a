"""One live job per run.dir (gpt/trainer/run_lock.py): the lock itself, in this process.

A double-submitted job used to "resume" into a live run: it replaced metrics.jsonl under the first
job and deleted its save in flight. These cases take the lock as a second job would; the end-to-end
refusal of a real second gpt-pretrain is in test_interrupt.py, of a 2-rank job in
test_lock_distributed.py.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import no_hang

from gpt.errors import RunDirError
from gpt.trainer import run_lock
from gpt.trainer.run_lock import LOCK, STALE_S, RunLock, owner_record


def write_owner(run_dir, **fields) -> dict:
    """A lock as another process would have written it (this machine unless told otherwise)."""
    owner = {**owner_record(), **fields}
    (run_dir / LOCK).write_text(json.dumps(owner))
    return owner


def start_time(pid: int) -> int:
    return run_lock._proc_stat(pid)[1]


@pytest.fixture
def sleeper():
    """A live process of this machine that is not us (the owner of a held lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_job_is_refused_in_one_line(tmp_path, sleeper):
    write_owner(tmp_path, pid=sleeper.pid, start_time=start_time(sleeper.pid), job=None)
    with pytest.raises(RunDirError) as e:
        RunLock(tmp_path).acquire()
    message = str(e.value)
    assert "\n" not in message and f"pid {sleeper.pid} on {socket.gethostname()}" in message
    assert "still running" in message and f"run.dir={tmp_path} is in use by another job" in message
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == sleeper.pid  # untouched


def test_the_lock_records_its_owner_and_is_released(tmp_path):
    lock = RunLock(tmp_path).acquire()
    owner = json.loads((tmp_path / LOCK).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["token"] == lock.me["token"]
    with pytest.raises(RunDirError):  # a second taker in this very process is still another job
        RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / LOCK).exists() and sorted(os.listdir(tmp_path)) == []


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, gpt_log):
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_owner(tmp_path, pid=dead.pid, start_time=None, job=None)
    lock = RunLock(tmp_path).acquire()
    try:
        assert json.loads((tmp_path / LOCK).read_text())["token"] == lock.me["token"]
        assert any(f"process {dead.pid} is no longer running" in r.getMessage() for r in gpt_log)
    finally:
        lock.release()


def test_a_reused_pid_is_not_its_owner(tmp_path):
    """The owner died and its pid now belongs to someone else (here: us): the start time differs."""
    write_owner(tmp_path, pid=os.getpid(), start_time=start_time(os.getpid()) - 1, job=None, token="old")
    RunLock(tmp_path).acquire().release()


def test_a_lock_from_before_a_reboot_of_this_machine_is_stale(tmp_path, sleeper):
    write_owner(tmp_path, pid=sleeper.pid, start_time=start_time(sleeper.pid), boot_id="an-earlier-boot", job=None)
    RunLock(tmp_path).acquire().release()


def test_another_hosts_lock_is_held_while_its_heartbeat_lasts(tmp_path):
    write_owner(tmp_path, host="node-7", boot_id="other", pid=12345, job="slurm:1")
    with pytest.raises(RunDirError, match="held by pid 12345 on node-7, job slurm:1.*last heartbeat"):
        RunLock(tmp_path).acquire()
    old = time.time() - STALE_S - 5
    os.utime(tmp_path / LOCK, (old, old))  # its job died without releasing it
    RunLock(tmp_path).acquire().release()


def test_an_earlier_start_of_the_same_job_on_another_node_is_taken_over(tmp_path, monkeypatch):
    """A requeued SLURM job (same job id) may start rank 0 on another node: no heartbeat wait."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    write_owner(tmp_path, host="node-3", boot_id="other", pid=999, job="slurm:4242")
    RunLock(tmp_path).acquire().release()
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # another job: refused
    write_owner(tmp_path, host="node-3", boot_id="other", pid=999, job="slurm:4242")
    with pytest.raises(RunDirError):
        RunLock(tmp_path).acquire()


def test_the_heartbeat_touches_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = RunLock(tmp_path).acquire()
    try:
        old = time.time() - 100
        os.utime(tmp_path / LOCK, (old, old))
        deadline = time.time() + 10
        while (tmp_path / LOCK).stat().st_mtime < old + 50 and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / LOCK).stat().st_mtime > old + 50
    finally:
        lock.release()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = RunLock(tmp_path).acquire()
    write_owner(tmp_path, token="someone-else")  # taken over (wrongly) by another job meanwhile
    lock.release()
    assert json.loads((tmp_path / LOCK).read_text())["token"] == "someone-else"


@pytest.mark.parametrize("content", ["garbage", "fifo"])
def test_an_unreadable_lock_never_hangs_and_is_taken_over_once_old(tmp_path, content):
    path = tmp_path / LOCK
    if content == "fifo":
        os.mkfifo(path)  # opening it for reading would block forever
    else:
        path.write_bytes(os.urandom(64))
    old = time.time() - 60
    os.utime(path, (old, old))
    with no_hang(path):
        RunLock(tmp_path).acquire().release()
    assert not path.exists()


def test_only_rank_0_takes_it(tmp_path):
    """The other ranks of a job (on any node) never touch the lock: they share rank 0's."""
    ctx = type("Ctx", (), {"rank": 1})()
    assert run_lock.acquire(tmp_path, ctx) is None and not (tmp_path / LOCK).exists()


def test_a_job_id_comes_from_slurm_or_torchrun(monkeypatch):
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert run_lock.this_job() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default id names no job
    assert run_lock.this_job() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_lock.this_job() == "torchrun:abc"
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert run_lock.this_job() == "slurm:17"
