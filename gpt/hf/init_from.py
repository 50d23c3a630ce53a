"""`model.init_from=<HF dir>`: a run starts from GPT-2 / Llama weights, in any parallel layout.

The HF config.json decides the architecture (`config.architecture`, applied without torch by
gpt/trainer/init_from.py: the `model.*` keys it implies replace the preset's, with a log line for each
change); `model.dropout` and `model.vocab_multiple` stay ours.
The weights become a slice source (`FullTensors`) that the checkpoint loader sets into every layout,
one parameter at a time. The tokenizer must be the one the token shards were made with.
"""

from pathlib import Path

from gpt.checkpoint.reader import FullTensors
from gpt.errors import ConfigError
from gpt.hf.files import HFWeights
from gpt.hf.tokenizer import difference, load_hf_tokenizer
from gpt.hf.weights import from_hf, hf_names

def check_tokenizer(directory: Path, shard_tokenizer, data_path) -> None:
    hf_tok = load_hf_tokenizer(directory)
    why = difference(shard_tokenizer, hf_tok)
    if why:
        raise ConfigError(f"model.init_from={directory} has another tokenizer than the token shards in {data_path} "
                          f"({why}); preprocess the data with tokenizer.kind=hf tokenizer.path={directory / 'tokenizer.json'}")


def weight_source(directory: Path, model_cfg, padded_vocab: int) -> FullTensors:
    """Our parameters, converted from the HF weights on demand (each rank converts only its own)."""
    weights = HFWeights(directory)
    missing = sorted(hf_names(model_cfg) - weights.keys())
    if missing:
        raise ConfigError(f"{directory} lacks {len(missing)} tensors its config.json implies (e.g. {missing[0]!r}); "
                          f"the weights do not belong to this config")
    return FullTensors(lambda name: from_hf(name, weights.get, model_cfg, padded_vocab), None, str(directory))
