"""From a placement and the user's command line to the exact torchrun command, or a refusal.

The config is composed and validated here, in the launcher, with the world size the placement
gives, so an impossible layout (parallel.tensor=3 on 8 processes) fails in a second with one line,
before any node starts a process. The overrides go to the ranks exactly as the user typed them.
"""

import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from gpt.config import Layout, TrainingConfig, compose, conf_dir, validate_training
from gpt.errors import ConfigError
from launcher.environment import Placement
from launcher.rendezvous import DEFAULT_TIMEOUT_S

_COMMAND = re.compile(r"^[a-z][a-z0-9_]*$")
# torchrun reads PET_<FLAG> as the default of each flag; the launcher consumes them (environment.py) and
# drops them from the ranks' environment, so the printed command is the whole truth.
CONSUMED_PREFIX = "PET_"


@dataclass(frozen=True, kw_only=True)
class LaunchPlan:
    """Everything `--dry-run` prints and `run` executes for this node."""

    placement: Placement
    command: str
    overrides: tuple[str, ...]
    layout: Layout
    run_dir: Path
    argv: tuple[str, ...]
    direct: bool = False
    """One process in all: argv starts the rank itself, without torchrun (no rendezvous, no ports)."""


def commands() -> list[str]:
    """Training commands: a `gpt.<name>` module whose `conf/<name>.yaml` extends a TrainingConfig schema.

    Other commands (preprocess, generate) run as one process and are started directly; N copies of
    them under torchrun would race on the same output.
    """
    from gpt.config.store import SCHEMAS

    names = sorted(p.stem for p in conf_dir().glob("*.yaml") if _COMMAND.match(p.stem))
    return [n for n in names if isinstance(SCHEMAS.get(f"{n}_schema"), type)
            and issubclass(SCHEMAS[f"{n}_schema"], TrainingConfig) and importlib.util.find_spec(f"gpt.{n}")]


def make_plan(command: str, overrides: Sequence[str], placement: Placement, *,
              rendezvous_timeout: int = DEFAULT_TIMEOUT_S) -> LaunchPlan:
    known = commands()
    if command not in known:
        raise ConfigError(f"unknown command {command!r}: choose one of {'|'.join(known)} "
                          f"(python -m launcher <command> key=value ...)")
    for arg in overrides:
        if arg.startswith("-"):
            raise ConfigError(f"{arg!r} is not a key=value override; launcher options go before the command "
                              f"(python -m launcher --help)")
    cfg = compose(command, list(overrides))
    if not isinstance(cfg, TrainingConfig):
        raise ConfigError(f"gpt.{command} is not a training command; run it directly (gpt-{command})")
    if cfg.model.init_from:  # the real architecture (shapes decide which layouts are possible); no torch
        from gpt.trainer.init_from import apply_architecture

        apply_architecture(cfg)
    try:
        layout = validate_training(cfg, placement.world)
    except ConfigError as e:
        raise ConfigError(f"{e} [{placement.nnodes} node(s) x {placement.nproc_per_node} process(es) per node: "
                          f"{placement.nproc_from}]") from None
    _check_gpus(placement, cfg.device)
    direct = placement.world == 1
    argv = ([sys.executable, "-m", f"gpt.{command}", *overrides] if direct
            else torchrun_argv(placement, command, overrides, rendezvous_timeout=rendezvous_timeout))
    return LaunchPlan(placement=placement, command=command, overrides=tuple(overrides), layout=layout,
                      run_dir=Path(os.path.abspath(cfg.run.dir)), argv=tuple(argv), direct=direct)


def torchrun_argv(p: Placement, command: str, overrides: Sequence[str], *,
                  rendezvous_timeout: int = DEFAULT_TIMEOUT_S) -> list[str]:
    """Several processes: torchrun (a one-process run starts the rank directly: a rendezvous would need a
    resolvable hostname and a port for nothing, and hangs in a container without a network)."""
    local = []
    if p.standalone:
        rendezvous = ["--standalone", "--nnodes=1"]
        # One node: no hostname lookups (a container's own name may not resolve): the local address is loopback.
        local = ["--local_addr=127.0.0.1"]
    else:
        # Static rendezvous: node ranks are SLURM's node ids (or PET_NODE_RANK), node 0 hosts the store.
        # --rdzv_conf=timeout: how long the nodes wait for each other (torchrun's default is 600 s).
        rendezvous = [f"--nnodes={p.nnodes}", f"--node_rank={p.node_rank}", "--rdzv_backend=static",
                      f"--master_addr={p.master_addr}", f"--master_port={p.master_port}",
                      f"--rdzv_conf=timeout={rendezvous_timeout}"]
    return [*_torchrun(), *rendezvous, f"--nproc_per_node={p.nproc_per_node}", "--max_restarts=0", *local,
            "-m", f"gpt.{command}", *overrides]


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(CONSUMED_PREFIX)}


def _torchrun() -> list[str]:
    beside = Path(sys.executable).parent / "torchrun"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def _check_gpus(p: Placement, device: str) -> None:
    if p.gpus and device != "cpu" and p.nproc_per_node > p.gpus:
        raise ConfigError(f"{p.nproc_per_node} processes per node ({p.nproc_from}) but {p.gpus} GPUs are visible: "
                          f"ranks would share GPUs; use --nproc-per-node={p.gpus} or device=cpu")
