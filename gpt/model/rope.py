"""Rotary position frequencies, with the scalings used to extend a model's context.

One inverse frequency per pair of head dimensions, theta^(-2i/hd) for plain RoPE (Su et al. 2021).
Continued pretraining at a longer context rescales them (the formulas are transformers'
`modeling_rope_utils`, so that imported and exported models compute the same function):
- linear (position interpolation, Chen et al. 2023): every frequency / factor;
- ntk (NTK-aware, static): theta * factor^(hd/(hd-2)); a plain change of base, exported to
  Hugging Face as rope_type "default" with that theta;
- llama3 (Llama 3.1): low frequencies (wavelength > original context / low_freq_factor) / factor,
  high ones (wavelength < original context / high_freq_factor) kept, a smooth blend in between.
"""

import math

import torch


def ntk_theta(theta: float, factor: float, head_dim: int) -> float:
    return theta * factor ** (head_dim / (head_dim - 2))


def inverse_frequencies(head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                        original_max_seq_len: int | None = None, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0) -> torch.Tensor:
    """(hd/2,) float32 inverse frequencies."""
    if scaling == "ntk":
        theta = ntk_theta(theta, factor, head_dim)
    # On the CPU also while a model is built on the meta device: Rotary recomputes its tables from it.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    if scaling == "linear":
        return inv_freq / factor
    if scaling == "llama3":
        low_wavelen = original_max_seq_len / low_freq_factor
        high_wavelen = original_max_seq_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original_max_seq_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, blended, scaled)
    return inv_freq


def model_frequencies(cfg) -> torch.Tensor:
    """inverse_frequencies for a ModelConfig (or the dict saved in a checkpoint)."""
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    factor = get("rope_factor") or 1.0
    original = get("rope_original_max_seq_len") or int(round(get("max_seq_len") / factor))
    return inverse_frequencies(get("n_embd") // get("n_head"), get("rope_theta"), get("rope_scaling") or "none",
                               factor, original, get("rope_low_freq_factor") or 1.0, get("rope_high_freq_factor") or 4.0)
