"""RoPE scaling settings: what validation refuses, and the identities the formulas must keep
(their agreement with transformers is tested in tests/hf/test_hf_conversion.py)."""

import pytest
import torch

from gpt.config.training import TrainingConfig
from gpt.config.validate import validate_training
from gpt.errors import ConfigError
from gpt.model.rope import inverse_frequencies, ntk_theta


def _cfg(**model):
    cfg = TrainingConfig()
    for k, v in {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", **model}.items():
        setattr(cfg.model, k, v)
    return cfg


@pytest.mark.parametrize("model, message", [
    (dict(rope_scaling="yarn"), "model.rope_scaling=yarn is not one of"),
    (dict(rope_scaling="linear", position="learned"), "needs model.position=rope"),
    (dict(rope_scaling="linear", rope_factor=0.5), "model.rope_factor=0.5 must be >= 1"),
    (dict(rope_scaling="ntk", rope_factor=float("nan")), "model.rope_factor=nan"),
    (dict(rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=4.0, rope_high_freq_factor=1.0),
     "must be positive and below"),
])
def test_impossible_scalings_are_refused(model, message):
    with pytest.raises(ConfigError, match=message):
        validate_training(_cfg(**model), world_size=1)


def test_the_scalings_are_what_they_claim():
    plain = inverse_frequencies(64, 1e4)
    assert torch.equal(inverse_frequencies(64, 1e4, "none", 8.0), plain)  # no scaling ignores the factor
    assert torch.allclose(inverse_frequencies(64, 1e4, "linear", 4.0), plain / 4)
    assert torch.allclose(inverse_frequencies(64, 1e4, "ntk", 4.0), inverse_frequencies(64, ntk_theta(1e4, 4.0, 64)))
    llama3 = inverse_frequencies(64, 5e5, "llama3", 8.0, 8192, 1.0, 4.0)
    assert llama3[0] == plain_at(5e5)[0]  # the highest frequency (wavelength 2 pi) is kept
    assert torch.allclose(llama3[-1], plain_at(5e5)[-1] / 8)  # the lowest is divided by the factor


def plain_at(theta):
    return inverse_frequencies(64, theta)
