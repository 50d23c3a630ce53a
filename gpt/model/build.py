"""From config to model: resolve vocab/MLP sizes, then build the GPT for this rank's tensor slice."""

from dataclasses import dataclass

from gpt.config.training import ModelConfig
from gpt.config.validate import ffn_hidden, padded_vocab_size
from gpt.errors import ConfigError
from gpt.model.gpt import GPT
from gpt.model.slots import Slots


@dataclass(frozen=True)
class ModelShape:
    """Sizes that depend on config and tokenizer but never on the parallel layout."""

    vocab_size: int  # the tokenizer's
    padded_vocab: int  # rows of the embedding table
    ffn_hidden: int


def model_shape(cfg: ModelConfig, tokenizer_vocab: int | None) -> ModelShape:
    vocab = cfg.vocab_size or tokenizer_vocab
    if vocab is None:
        raise ConfigError("model.vocab_size is null and no tokenizer is known; set model.vocab_size or data.path")
    if tokenizer_vocab is not None and vocab < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={vocab} is smaller than the tokenizer's vocabulary {tokenizer_vocab}")
    return ModelShape(vocab, padded_vocab_size(vocab, cfg.vocab_multiple), ffn_hidden(cfg))


def build_model(cfg: ModelConfig, shape: ModelShape, *, seed: int, tp_size: int = 1, tp_group=None,
                slots: Slots | None = None) -> GPT:
    slots = slots or Slots(tp_size, tp_group)
    return GPT(cfg, slots, vocab=shape.padded_vocab, vocab_size=shape.vocab_size, ffn_hidden=shape.ffn_hidden,
               seed=seed)
