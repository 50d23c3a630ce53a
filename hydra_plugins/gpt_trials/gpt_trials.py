"""Hydra launcher plugin for `gpt-pretrain -m` / `gpt-finetune -m`: each trial its own training process.

Hydra's sweepers (the basic grid of `key=a,b,c` / `range()`, hydra-optuna-sweeper's search) decide
which points to run and hand each batch of overrides to a launcher. This one runs every trial as a
separate `python -m gpt.<command>` (or `python -m launcher <command>`, i.e. torchrun on this node or a
SLURM allocation) in its own run.dir, and returns the trial's validation loss as its value. The
work is done by gpt/sweep.py; this module only has to live in `hydra_plugins`, where Hydra looks for
plugins.
"""

from dataclasses import dataclass, field
from typing import Any, List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class GptTrialsConf:
    _target_: str = "hydra_plugins.gpt_trials.gpt_trials.GptTrials"
    via: str = "process"
    """process: `python -m gpt.<command>` (one process) | launcher: `python -m launcher <command>` (torchrun with
    the placement the launcher detects: GPUs of this node, GPT_NPROC_PER_NODE, a SLURM allocation)."""
    prefix: List[str] = field(default_factory=list)
    """Words put before each trial's command, e.g. [srun,--ntasks-per-node=1] to run every trial on all
    nodes of a SLURM allocation."""
    objective: str = "best_val_loss"
    """best_val_loss | final_val_loss: the value each trial returns to the sweeper (minimised by default)."""


ConfigStore.instance().store(group="hydra/launcher", name="gpt_trials", node=GptTrialsConf, provider="gpt")


class GptTrials(Launcher):
    def __init__(self, via: str = "process", prefix: Sequence[str] = (), objective: str = "best_val_loss") -> None:
        self.options = {"via": via, "prefix": list(prefix), "objective": objective}
        self.runner: Any = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        # The sweep driver (gpt.sweep.TrialRunner) is the "task function": it runs one trial's overrides.
        self.runner = task_function
        self.runner.configure(sweep_dir=str(config.hydra.sweep.dir), **self.options)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return [self.runner.run_trial(list(overrides), initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
