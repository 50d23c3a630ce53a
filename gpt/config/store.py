"""Registers every config schema with Hydra's ConfigStore (the yaml files in conf/ extend these)."""

from hydra.core.config_store import ConfigStore

from gpt.config.commands import EvaluateConfig, GenerateConfig, PreprocessConfig
from gpt.config.training import TrainingConfig

SCHEMAS = {
    "pretrain_schema": TrainingConfig,
    "preprocess_schema": PreprocessConfig,
    "generate_schema": GenerateConfig,
    "eval_schema": EvaluateConfig,
}


def register() -> None:
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
