"""megatron-core, imported for the whole package through this module.

gpt uses megatron-core's parallel_state, tensor-parallel layers and vocab-parallel cross entropy.
Importing megatron.core costs 2.3 s of every rank's start-up on a CPU for parts gpt never runs:
its fused kernels are torch.compile'd at import (imported here under lazy_compile.deferred(), see
there), and its dynamic inference context (megatron/core/inference/contexts) imports wandb if it can
(0.7 s): it is imported with wandb hidden, so that context sees none; gpt's own W&B logging
(gpt/trainer/metrics.py) imports wandb itself when a run logs to it.
Import megatron.core's names from here (`from gpt.parallel.megatron_core import parallel_state`).
"""

import sys

from gpt.parallel import lazy_compile

if "megatron.core" not in sys.modules:
    hide_wandb = "wandb" not in sys.modules
    if hide_wandb:
        sys.modules["wandb"] = None  # `import wandb` fails at once, nothing half-imported
    try:
        lazy_compile.import_module("megatron.core")
    finally:
        if hide_wandb:
            del sys.modules["wandb"]

from megatron.core import ModelParallelConfig, parallel_state, tensor_parallel  # noqa: E402
from megatron.core.utils import get_pg_rank  # noqa: E402

__all__ = ["ModelParallelConfig", "parallel_state", "tensor_parallel", "get_pg_rank"]
