"""Typed configuration of gpt-plan: a training run's config plus the machine it would run on."""

import re
from dataclasses import dataclass

from gpt.config.training import TrainingConfig
from gpt.errors import ConfigError


@dataclass(kw_only=True)
class PlanConfig(TrainingConfig):
    """What gpt-plan composes from conf/plan.yaml: the keys of gpt-pretrain, plus the machine."""

    nodes: int = 1
    """Nodes of the machine the run would use."""
    gpus_per_node: int = 8
    """GPUs (processes) per node; the world size is nodes x gpus_per_node."""
    gpu_memory: str = "80GB"
    """Memory of one GPU: 80GB, 141GB, 24GiB, 40000MB, or a number of bytes. GB and GiB both mean 2**30 bytes (GPU memory is quoted in binary units: an "80GB" H100 holds 80 GiB)."""


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def memory_bytes(text: str, key: str = "gpu_memory") -> int:
    """'80GB' / '80GiB' / '81920MB' / '85899345920' -> bytes (binary units; see PlanConfig.gpu_memory)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{key}={text} is not a memory size; write e.g. {key}=80GB, {key}=24GiB or a number of bytes")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    value = float(m.group(1)) * 1024 ** {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit]
    if value <= 0:
        raise ConfigError(f"{key}={text} must be positive")
    return int(value)


def validate_machine(cfg: PlanConfig) -> int:
    """The world size the machine gives (nodes x gpus_per_node); one-line errors for bad values."""
    for key in ("nodes", "gpus_per_node"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    memory_bytes(cfg.gpu_memory)
    return cfg.nodes * cfg.gpus_per_node
