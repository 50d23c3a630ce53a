"""How many GPUs this node offers, counted without importing torch (or initialising CUDA).

The count decides the default number of processes per node: one rank per GPU.
"""

import glob
import re
from typing import Mapping

_NVIDIA_DEVICE = re.compile(r"/dev/nvidia\d+$")


def visible_gpus(env: Mapping[str, str]) -> tuple[int, str]:
    """(GPU count, where it came from): CUDA_VISIBLE_DEVICES, else SLURM's GPU allocation, else /dev/nvidiaN."""
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [d.strip() for d in cvd.split(",") if d.strip()]
        if ids and ids[0] in ("-1", "NoDevFiles"):  # CUDA's and SLURM's ways of saying "none"
            ids = []
        return len(ids), "CUDA_VISIBLE_DEVICES"
    slurm = env.get("SLURM_GPUS_ON_NODE")
    if slurm and slurm.isdigit():
        return int(slurm), "SLURM_GPUS_ON_NODE"
    devices = [p for p in glob.glob("/dev/nvidia*") if _NVIDIA_DEVICE.match(p)]
    return len(devices), "/dev/nvidia*"
