"""Registers every config schema with Hydra's ConfigStore (the yaml files in conf/ extend these)."""

from hydra.core.config_store import ConfigStore

from gpt.config.commands import (
    CheckpointToolConfig,
    EvaluateConfig,
    ExportConfig,
    GenerateConfig,
    PlotConfig,
    PreprocessConfig,
)
from gpt.config.finetune import FinetuneConfig
from gpt.config.plan import PlanConfig
from gpt.config.training import TrainingConfig

SCHEMAS = {
    "pretrain_schema": TrainingConfig,
    "finetune_schema": FinetuneConfig,
    "preprocess_schema": PreprocessConfig,
    "generate_schema": GenerateConfig,
    "eval_schema": EvaluateConfig,
    "export_schema": ExportConfig,
    "checkpoint_schema": CheckpointToolConfig,
    # gpt-plan's module is gpt/plan_cli.py (as gpt-checkpoint's is checkpoint_cli.py): the launcher
    # starts `gpt.<name>` for every TrainingConfig schema, and gpt-plan is one process that starts nothing.
    "plan_schema": PlanConfig,
    "plot_schema": PlotConfig,
}

# Command-line spellings that name another key: `gpt-finetune checkpoint=<path>` reads like gpt-eval,
# gpt-generate and gpt-export, while `checkpoint.*` stays the section of checkpoint-saving settings.
ALIASES = {"finetune": {"checkpoint": "model.init_from"}}


def register() -> None:
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
