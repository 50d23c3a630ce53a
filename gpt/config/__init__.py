"""Typed configs (dataclasses registered with Hydra), loading and validation. Imports no torch."""

from gpt.config.commands import GenerateConfig, PreprocessConfig, TokenizerConfig
from gpt.config.loader import compose, conf_dir
from gpt.config.training import TrainingConfig
from gpt.config.validate import Layout, validate_training

__all__ = ["GenerateConfig", "PreprocessConfig", "TokenizerConfig", "TrainingConfig", "Layout",
           "compose", "conf_dir", "validate_training"]
