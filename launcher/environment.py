"""Where am I running? SLURM, a container with torchrun's variables, or one box with nothing set.

`detect(env, pinned)` turns the environment (plus what the user pinned on the command line) into
one node's `Placement`: how many nodes, which one this is, how many processes to start here, and
where rank 0's rendezvous lives. It reads a mapping, never `os.environ` directly, so every rule is
a unit test away.

Sources, in order:
- SLURM (`SLURM_JOB_ID` set): nodes and node rank from the job step (`srun`, one task per node),
  rank 0 on the first host of the allocation, port from `MASTER_PORT` (the batch script picks a
  free one on that host) or else derived from the job id.
- torchrun's environment (`PET_NNODES` / `PET_NODE_RANK`, as Kubeflow's PyTorchJob and our
  Kubernetes example set them): the variables torchrun itself reads, made explicit.
- nothing: one node.
Processes per node: `--nproc-per-node`, else `GPT_NPROC_PER_NODE`, else `PET_NPROC_PER_NODE`, else
one per visible GPU, else 1 (CPU).
"""

from dataclasses import dataclass, replace
from typing import Literal, Mapping, Optional

from gpt.errors import ConfigError
from launcher import hostlist
from launcher.devices import visible_gpus

DEFAULT_PORT = 29500  # torchrun's default for a rendezvous outside SLURM
_JOB_PORT_BASE, _JOB_PORT_SPAN = 15000, 17000  # below Linux's ephemeral range (32768+)


@dataclass(frozen=True, kw_only=True)
class Pinned:
    """What the user fixed on the launcher's command line; None means "derive it from the environment"."""

    nproc_per_node: Optional[int] = None
    nnodes: Optional[int] = None
    node_rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None


@dataclass(frozen=True, kw_only=True)
class Placement:
    """One node's view of a job: what this launcher must start and whom it meets."""

    source: Literal["slurm", "torchrun env", "local"]
    """Where nodes and node rank came from."""
    nnodes: int
    node_rank: int
    nproc_per_node: int
    nproc_from: str
    """Why that many processes per node (shown by --dry-run)."""
    gpus: int
    """GPUs visible on this node (0: the ranks run on CPU)."""
    master_addr: Optional[str]
    """Host of rank 0's rendezvous store; None on one node (torchrun --standalone picks a free port)."""
    master_port: Optional[int]
    job_id: Optional[str] = None
    slurm_step: bool = False
    """Started by srun (one launcher per node), not in the batch shell itself."""

    @property
    def world(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def standalone(self) -> bool:
        return self.master_addr is None


def detect(env: Mapping[str, str], pinned: Pinned = Pinned()) -> Placement:
    gpus, gpus_from = visible_gpus(env)
    nproc, nproc_from = _nproc_per_node(env, pinned, gpus, gpus_from)
    if env.get("SLURM_JOB_ID"):
        placement = _slurm(env, nproc, nproc_from, gpus)
    elif env.get("PET_NNODES") or env.get("PET_NODE_RANK"):
        placement = _torchrun_env(env, nproc, nproc_from, gpus)
    else:
        placement = Placement(source="local", nnodes=1, node_rank=0, nproc_per_node=nproc, nproc_from=nproc_from,
                              gpus=gpus, master_addr=_get(env, "MASTER_ADDR"),
                              master_port=_int_or_none(env, "MASTER_PORT"))
    return _finish(_apply_pinned(placement, pinned))


def port_for_job(job_id: str) -> int:
    """A port every node of a SLURM job derives alike, different for neighbouring job ids."""
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return _JOB_PORT_BASE + int(digits) % _JOB_PORT_SPAN


def _nproc_per_node(env, pinned: Pinned, gpus: int, gpus_from: str) -> tuple[int, str]:
    if pinned.nproc_per_node is not None:
        return pinned.nproc_per_node, "--nproc-per-node"
    for name in ("GPT_NPROC_PER_NODE", "PET_NPROC_PER_NODE"):
        value = _get(env, name)
        if value is None:
            continue
        if name == "PET_NPROC_PER_NODE" and value in ("gpu", "auto"):
            break
        return _parse_int(name, value), name
    if gpus:
        return gpus, f"one per GPU: {gpus} ({gpus_from})"
    return 1, "no GPU visible, one CPU process (set --nproc-per-node or GPT_NPROC_PER_NODE for more)"


def _slurm(env, nproc: int, nproc_from: str, gpus: int) -> Placement:
    job = env["SLURM_JOB_ID"]
    in_step = bool(env.get("SLURM_STEP_ID"))
    if in_step:
        nnodes = _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_NNODES", 1))
        tasks = _int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS", nnodes))
        if tasks != nnodes:
            raise ConfigError(
                f"SLURM started {tasks} tasks on {nnodes} node(s), but the launcher wants exactly one task per node "
                f"(it starts the ranks itself): use `srun --ntasks-per-node=1` / `#SBATCH --ntasks-per-node=1`")
        node_rank = _int(env, "SLURM_NODEID", 0)
        nodelist = _get(env, "SLURM_STEP_NODELIST") or _get(env, "SLURM_JOB_NODELIST")
    else:
        nnodes = _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1))
        node_rank = 0
        nodelist = _get(env, "SLURM_JOB_NODELIST") or _get(env, "SLURM_NODELIST")
    addr = _get(env, "MASTER_ADDR")
    if addr is None and nodelist:
        try:
            addr = hostlist.expand(nodelist)[0]
        except (ValueError, IndexError) as e:
            raise ConfigError(f"cannot read the SLURM node list {nodelist!r} ({e}); set MASTER_ADDR") from None
    port = _int_or_none(env, "MASTER_PORT")
    return Placement(source="slurm", nnodes=nnodes, node_rank=node_rank, nproc_per_node=nproc, nproc_from=nproc_from,
                     gpus=gpus, master_addr=addr, master_port=port if port is not None else port_for_job(job),
                     job_id=job, slurm_step=in_step)


def _torchrun_env(env, nproc: int, nproc_from: str, gpus: int) -> Placement:
    nnodes_text = _get(env, "PET_NNODES") or "1"
    if ":" in nnodes_text:
        raise ConfigError(f"PET_NNODES={nnodes_text}: elastic node ranges are not supported (a run's layout is "
                          f"fixed); set a single node count, e.g. PET_NNODES=4")
    return Placement(source="torchrun env", nnodes=_parse_int("PET_NNODES", nnodes_text),
                     node_rank=_int(env, "PET_NODE_RANK", 0), nproc_per_node=nproc, nproc_from=nproc_from, gpus=gpus,
                     master_addr=_get(env, "PET_MASTER_ADDR") or _get(env, "MASTER_ADDR"),
                     master_port=_int_or_none(env, "PET_MASTER_PORT") or _int_or_none(env, "MASTER_PORT"))


def _apply_pinned(p: Placement, pinned: Pinned) -> Placement:
    changes = {k: v for k, v in (("nnodes", pinned.nnodes), ("node_rank", pinned.node_rank),
                                 ("master_addr", pinned.master_addr), ("master_port", pinned.master_port))
               if v is not None}
    return replace(p, **changes)


def _finish(p: Placement) -> Placement:
    if p.nnodes < 1:
        raise ConfigError(f"nnodes={p.nnodes} must be at least 1")
    if p.nproc_per_node < 1:
        raise ConfigError(f"processes per node={p.nproc_per_node} ({p.nproc_from}) must be at least 1")
    if not 0 <= p.node_rank < p.nnodes:
        raise ConfigError(f"node rank {p.node_rank} is not in [0, {p.nnodes - 1}] for {p.nnodes} node(s)")
    if p.nnodes == 1:
        # One node: torchrun --standalone binds a free local port, so jobs sharing a node never collide.
        return replace(p, master_addr=None, master_port=None)
    if not p.master_addr:
        raise ConfigError(f"{p.nnodes} nodes need the address of node 0: set MASTER_ADDR (or PET_MASTER_ADDR) "
                          f"or pass --master-addr HOST")
    port = p.master_port if p.master_port is not None else DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ConfigError(f"master port {port} is not in [1, 65535]")
    return replace(p, master_port=port)


def _get(env, name: str) -> Optional[str]:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _int(env, name: str, default: int) -> int:
    value = _get(env, name)
    return default if value is None else _parse_int(name, value)


def _int_or_none(env, name: str) -> Optional[int]:
    value = _get(env, name)
    return None if value is None else _parse_int(name, value)
