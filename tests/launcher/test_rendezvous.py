"""A one-process run needs no rendezvous (started without torchrun); a rendezvous that cannot be reached
fails within a bounded time, with one line that says why, instead of torchrun's minutes of retries."""

import shlex
import socket
import time

import pytest
from helpers import launch_env, run_module

ARGS = ["pretrain", "model.n_layer=1"]


def launcher(args, timeout=120, **variables):
    return run_module("launcher", args, env=launch_env(**variables), timeout=timeout)


def last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_is_started_without_torchrun():
    proc = launcher(["--dry-run", *ARGS])
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert out["rendezvous"].strip() == "none (one process: started directly, without torchrun)"
    argv = shlex.split(out["command"])
    assert argv[1:] == ["-m", "gpt.pretrain", "model.n_layer=1"] and "torchrun" not in argv[0]


def test_one_node_of_several_processes_needs_no_hostname():
    proc = launcher(["--dry-run", *ARGS], GPT_NPROC_PER_NODE="2")
    argv = shlex.split(dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)["command"])
    assert "--standalone" in argv and "--local_addr=127.0.0.1" in argv


def test_an_unresolvable_rendezvous_host_fails_at_once():
    start = time.monotonic()
    proc = launcher(["--nnodes", "2", "--node-rank", "1", "--master-addr", "no-such-node.invalid", *ARGS])
    assert proc.returncode == 2
    assert last_line(proc).startswith("gpt-launch: error: cannot resolve the rendezvous host 'no-such-node.invalid'")
    assert time.monotonic() - start < 60


def test_an_unreachable_node0_fails_within_the_bound():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    proc = launcher(["--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                     *ARGS], GPT_RENDEZVOUS_TIMEOUT="3")
    assert proc.returncode == 2
    assert last_line(proc).startswith(f"gpt-launch: error: node 0's rendezvous at 127.0.0.1:{port} did not answer "
                                      f"within 3 s (Connection refused)")
    assert time.monotonic() - start < 60


@pytest.mark.distributed
def test_node0_whose_peers_never_come_gives_up_within_the_bound(shards, tmp_path):
    """torchrun gets the same bound (--rdzv_conf=timeout=...); the launcher then says why in one line."""
    port = free_port()
    start = time.monotonic()
    proc = launcher(["--nnodes", "2", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", str(port),
                     "pretrain", f"data.path={shards}", f"run.dir={tmp_path / 'run'}"], GPT_RENDEZVOUS_TIMEOUT="5")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc).startswith("gpt-launch: error: the rendezvous did not complete within 5 s (2 nodes "
                                      f"expected at node 0's rendezvous at 127.0.0.1:{port})")
    assert time.monotonic() - start < 120
