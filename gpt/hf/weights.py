"""Parameter names and layouts: ours (one-process, canonical) <-> `transformers` GPT-2 / Llama.

The differences, all exact (no arithmetic, so a round trip is bit-identical):
- our fused qkv rows are grouped per kv head, `[q x n_head/n_kv, k, v]` per group (the tensor-
  parallel layout); GPT-2's `c_attn` is `[all q; all k; all v]`, Llama has separate q/k/v_proj.
  Both Rotary implementations use the rotate-half convention, so no per-head permutation.
- GPT-2 stores linears as `Conv1D`, i.e. transposed (in, out).
- our vocabulary is padded to model.vocab_multiple rows; HF gets the tokenizer's rows only, and the
  pad rows come back as zeros (they are never predicted).
"""

from typing import Callable

import torch

from gpt.hf.config import GPT2, LLAMA, ModelFields, family

Get = Callable[[str], torch.Tensor]


def _heads(m) -> tuple[int, int, int]:
    f = ModelFields(m)
    kv = f.n_kv_head or f.n_head
    return f.n_head, kv, f.n_embd // f.n_head


def split_qkv(w: torch.Tensor, m) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our grouped qkv rows (weight (rows, h) or bias (rows,)) -> (q, k, v) rows in head order."""
    nh, kv, hd = _heads(m)
    g = w.view(kv, nh // kv + 2, hd, *w.shape[1:])
    q = g[:, : nh // kv].reshape(nh * hd, *w.shape[1:])
    return q, g[:, -2].reshape(kv * hd, *w.shape[1:]), g[:, -1].reshape(kv * hd, *w.shape[1:])


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m) -> torch.Tensor:
    nh, kv, hd = _heads(m)
    rest = q.shape[1:]
    groups = [q.view(kv, nh // kv, hd, *rest), k.view(kv, 1, hd, *rest), v.view(kv, 1, hd, *rest)]
    return torch.cat(groups, dim=1).reshape((nh + 2 * kv) * hd, *rest).contiguous()


def _layer_map(m) -> dict[str, str]:
    """Our per-block names -> HF per-layer names (linears other than qkv, norms)."""
    if family(m) == GPT2:
        return {"ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias", "ln_2.weight": "ln_2.weight",
                "ln_2.bias": "ln_2.bias"}
    f = ModelFields(m)
    names = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
             "attn.proj.weight": "self_attn.o_proj.weight", "mlp.gate.weight": "mlp.gate_proj.weight",
             "mlp.up.weight": "mlp.up_proj.weight", "mlp.down.weight": "mlp.down_proj.weight"}
    if f.bias:
        names.update({"attn.proj.bias": "self_attn.o_proj.bias", "mlp.gate.bias": "mlp.gate_proj.bias",
                      "mlp.up.bias": "mlp.up_proj.bias", "mlp.down.bias": "mlp.down_proj.bias"})
    return names


# GPT-2 Conv1D weights (transposed) and the biases beside them.
_GPT2_CONV = {"attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


def to_hf(state: dict[str, torch.Tensor], m, vocab_size: int) -> dict[str, torch.Tensor]:
    """Our full state dict -> the HF model's (GPT2LMHeadModel / LlamaForCausalLM) state dict."""
    fam, f = family(m), ModelFields(m)
    out: dict[str, torch.Tensor] = {}
    prefix = "transformer.h" if fam == GPT2 else "model.layers"
    for i in range(f.n_layer):
        ours, theirs = f"blocks.{i}.", f"{prefix}.{i}."
        for a, b in _layer_map(m).items():
            out[theirs + b] = state[ours + a]
        q, k, v = split_qkv(state[ours + "attn.qkv.weight"], m)
        bias = split_qkv(state[ours + "attn.qkv.bias"], m) if f.bias else None
        if fam == GPT2:
            out[theirs + "attn.c_attn.weight"] = torch.cat([q, k, v]).t()
            out[theirs + "attn.c_attn.bias"] = torch.cat(bias)
            for a, b in _GPT2_CONV.items():
                out[theirs + b + ".weight"] = state[ours + a + ".weight"].t()
                out[theirs + b + ".bias"] = state[ours + a + ".bias"]
        else:
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[theirs + f"self_attn.{proj}.weight"] = (q, k, v)[j]
                if bias is not None:
                    out[theirs + f"self_attn.{proj}.bias"] = bias[j]
    wte = state["embedding.wte.weight"][:vocab_size]
    if fam == GPT2:
        out["transformer.wte.weight"] = wte
        out["transformer.wpe.weight"] = state["embedding.wpe.weight"]
        out["transformer.ln_f.weight"] = state["norm.ln_f.weight"]
        out["transformer.ln_f.bias"] = state["norm.ln_f.bias"]
    else:
        out["model.embed_tokens.weight"] = wte
        out["model.norm.weight"] = state["norm.ln_f.weight"]
    if not f.tie_embeddings:
        out["lm_head.weight"] = state["output.head.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf(name: str, get: Get, m, padded_vocab: int) -> torch.Tensor:
    """Our parameter `name` (full, fp32) built from HF tensors fetched lazily by `get(hf_name)`.

    One parameter at a time, so each rank of a large model reads only what it holds.
    """
    fam = family(m)
    if name in ("embedding.wte.weight", "output.head.weight"):
        key = "lm_head.weight" if name == "output.head.weight" else \
            ("transformer.wte.weight" if fam == GPT2 else "model.embed_tokens.weight")
        rows = get(key).float()
        pad = rows.new_zeros(padded_vocab - rows.shape[0], rows.shape[1])
        return torch.cat([rows, pad])
    if name == "embedding.wpe.weight":
        return get("transformer.wpe.weight").float()
    if name.startswith("norm.ln_f."):
        return get(("transformer.ln_f." if fam == GPT2 else "model.norm.") + name.rsplit(".", 1)[1]).float()
    _, i, rest = name.split(".", 2)
    theirs = f"{'transformer.h' if fam == GPT2 else 'model.layers'}.{i}."
    if rest.startswith("attn.qkv."):
        kind = rest.rsplit(".", 1)[1]  # weight | bias
        if fam == GPT2:
            w = get(theirs + f"attn.c_attn.{kind}").float()
            w = w.t() if kind == "weight" else w
            nh, _, hd = _heads(m)
            q, k, v = w.split(nh * hd)
        else:
            q, k, v = (get(theirs + f"self_attn.{p}.{kind}").float() for p in ("q_proj", "k_proj", "v_proj"))
        return fuse_qkv(q, k, v, m)
    layer = _layer_map(m)
    if rest in layer:
        return get(theirs + layer[rest]).float()
    if fam == GPT2:
        module, kind = rest.rsplit(".", 1)
        if module in _GPT2_CONV:
            w = get(theirs + _GPT2_CONV[module] + "." + kind).float()
            return w.t().contiguous() if kind == "weight" else w
    raise KeyError(f"no Hugging Face tensor for {name!r} in a {fam} model")


def hf_names(m) -> set[str]:
    """Every tensor name a complete HF checkpoint of this model has (tied lm_head excluded)."""
    fam, f = family(m), ModelFields(m)
    names = set()
    prefix = "transformer.h" if fam == GPT2 else "model.layers"
    for i in range(f.n_layer):
        p = f"{prefix}.{i}."
        names |= {p + b for b in _layer_map(m).values()}
        if fam == GPT2:
            names |= {p + "attn.c_attn.weight", p + "attn.c_attn.bias"}
            names |= {p + b + s for b in _GPT2_CONV.values() for s in (".weight", ".bias")}
        else:
            names |= {p + f"self_attn.{x}.{k}" for x in ("q_proj", "k_proj", "v_proj")
                      for k in (("weight", "bias") if f.bias else ("weight",))}
    names |= {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"} \
        if fam == GPT2 else {"model.embed_tokens.weight", "model.norm.weight"}
    if not f.tie_embeddings:
        names.add("lm_head.weight")
    return names


__all__ = ["GPT2", "LLAMA", "to_hf", "from_hf", "hf_names", "split_qkv", "fuse_qkv"]
