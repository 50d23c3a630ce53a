"""The model: plain transformer code; parallelism enters through `Slots` (which layer classes fill each slot)."""

from gpt.model.build import ModelShape, build_model, model_shape
from gpt.model.gpt import GPT, Block, Embedding, Norm, Output, token_losses
from gpt.model.slots import LayerInit, Slots

__all__ = ["GPT", "Block", "Embedding", "Norm", "Output", "LayerInit", "Slots", "ModelShape", "build_model",
           "model_shape", "token_losses"]
