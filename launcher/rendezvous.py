"""Before torchrun starts: can this node reach node 0's rendezvous at all? Bounded, one line if not.

torchrun's static rendezvous waits for node 0's store with retries and name-resolution warnings for
up to its timeout (600 s by default), and a container whose names do not resolve can sit there for
many minutes before anything says why. So the launcher checks first, with plain sockets and no torch:

- the rendezvous host must resolve (on every node): an error at once otherwise;
- nodes other than 0 wait until node 0's port accepts a connection, at most `timeout_s`, saying so
  every 30 s, then fail with one line naming the host, the port and the likely causes;
- torchrun itself gets the same bound (`--rdzv_conf=timeout=...`), so node 0, which waits for the
  others inside torchrun, gives up after it too (the launcher then says why in one line).

The bound is GPT_RENDEZVOUS_TIMEOUT seconds (default 300).
"""

import socket
import time
from typing import Callable, Mapping

from gpt.errors import ConfigError
from launcher.environment import Placement

DEFAULT_TIMEOUT_S = 300
REPORT_EVERY_S = 30.0


def timeout_s(env: Mapping[str, str]) -> int:
    value = env.get("GPT_RENDEZVOUS_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = int(value)
    except ValueError:
        raise ConfigError(f"GPT_RENDEZVOUS_TIMEOUT={value!r} is not a whole number of seconds") from None
    if seconds < 1:
        raise ConfigError(f"GPT_RENDEZVOUS_TIMEOUT={seconds} must be at least 1 second")
    return seconds


def where(p: Placement) -> str:
    return f"node 0's rendezvous at {p.master_addr}:{p.master_port}"


def resolve(p: Placement) -> None:
    """The rendezvous host must resolve here (torchrun would otherwise retry for minutes)."""
    try:
        socket.getaddrinfo(p.master_addr, p.master_port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ConfigError(f"cannot resolve the rendezvous host {p.master_addr!r} ({e.strerror or e}): set "
                          f"PET_MASTER_ADDR / MASTER_ADDR / --master-addr to a name this node resolves, or to node 0's "
                          f"IP address (a container needs --network host or a network where node 0's name resolves)") from None


def wait_for_node0(p: Placement, seconds: int, say: Callable[[str], None],
                   clock: Callable[[], float] = time.monotonic) -> None:
    """Nodes 1..n-1: until node 0's store accepts connections, at most `seconds`."""
    start = last_report = clock()
    error = "no answer"
    while True:
        try:
            with socket.create_connection((p.master_addr, p.master_port), timeout=min(5.0, seconds)):
                return
        except OSError as e:
            error = e.strerror or str(e)
        now = clock()
        if now - start >= seconds:
            raise ConfigError(f"{where(p)} did not answer within {seconds} s ({error}): start node 0 (node_rank 0) with "
                              f"the same master address and port, check that this node can reach "
                              f"{p.master_addr}:{p.master_port} (firewall, container network), or raise "
                              f"GPT_RENDEZVOUS_TIMEOUT")
        if now - last_report >= REPORT_EVERY_S:
            say(f"waiting for {where(p)} ({error}; {int(now - start)} of {seconds} s)")
            last_report = now
        time.sleep(1.0)


def check(p: Placement, env: Mapping[str, str], say: Callable[[str], None]) -> None:
    """What the launcher runs before torchrun on a multi-node placement (a no-op on one node)."""
    if p.standalone:
        return
    resolve(p)
    if p.node_rank != 0:
        wait_for_node0(p, timeout_s(env), say)


def failed_before_ranks(p: Placement, seconds: int) -> str:
    """The line the launcher prints when torchrun exits with an error before any rank started."""
    return (f"the rendezvous did not complete within {seconds} s ({p.nnodes} nodes expected at {where(p)}): start "
            f"every node with the same master address and port and check that they can reach node 0 "
            f"({p.master_addr}:{p.master_port}); see torchrun's message above")


