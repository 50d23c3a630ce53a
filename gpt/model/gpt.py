"""The GPT: GPT-2 (pre-LayerNorm, learned positions, GELU MLP, tied embeddings) and, by config, the
Llama family (RMSNorm, RoPE, SwiGLU, grouped-query attention, untied head, no biases).

It is an ordered list of layers — Embedding, Block x n_layer, Norm, Output — so the same classes run
as one module here or as stages of DeepSpeed's PipelineModule (gpt/engine/pipeline.py). Tensor
parallelism comes from the `Slots` that build each linear; nothing below branches on it.
Shapes: b batch, t time, h n_embd, nh/nkv local query/kv heads, hd head size, v/p local vocab rows.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.config.training import ModelConfig
from gpt.model import rope
from gpt.model.slots import LayerInit, Slots


class Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig, slots: Slots, init: LayerInit, vocab: int):
        super().__init__()
        self.wte = slots.vocab_embedding(vocab, cfg.n_embd, init=init.normal())
        self.wpe = None
        if cfg.position == "learned":
            self.wpe = slots.embedding(cfg.max_seq_len, cfg.n_embd, init=init.normal())
        self.positions = slots.positions
        self.split = slots.residual_split()  # sequence parallel: (b, t, h) -> (b, t/p, h)
        self.drop = slots.dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        x = self.wte(idx)  # (b, t) -> (b, t, h)
        if self.wpe is not None:
            x = x + self.wpe(self.positions(idx.shape[1], start_pos, idx.device))
        return self.drop(self.split(x))


class Rotary(nn.Module):
    """RoPE (rotate-half convention, as Hugging Face Llama) on (b, n, t, hd); frequencies from rope.py."""

    def __init__(self, max_seq_len: int, inv_freq: torch.Tensor):
        super().__init__()
        self.max_seq_len, self.inv_freq = max_seq_len, inv_freq  # (hd/2,) on the CPU (rope.py)
        self.reset_buffers()

    def reset_buffers(self, device=None) -> None:
        """(Re)compute the cos/sin tables on `device` (default: where tensors are being built, so only
        shapes on the meta device; a model built there is materialised through this)."""
        device = torch.empty(0, device=device).device
        if device.type == "meta":  # shapes only (arange on meta runs torch's Python refs: 1.4 s of imports)
            cos = sin = torch.empty(self.max_seq_len, 2 * len(self.inv_freq), device=device)
        else:
            freqs = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float32, device=device),
                                self.inv_freq.to(device))  # (T, hd/2)
            emb = torch.cat([freqs, freqs], dim=-1)  # (T, hd)
            cos, sin = emb.cos(), emb.sin()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)  # (t, hd)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, slots: Slots, init: LayerInit):
        super().__init__()
        self.hd = cfg.n_embd // cfg.n_head
        n_kv = cfg.n_kv_head or cfg.n_head
        self.nh, self.nkv = cfg.n_head // slots.tp_size, n_kv // slots.tp_size
        # Fused qkv, rows grouped per kv head: [q x n_head/n_kv, k, v] per group, so that a
        # contiguous split over the tensor group gives each rank whole groups (Megatron's layout).
        self.qkv = slots.column(cfg.n_embd, (cfg.n_head + 2 * n_kv) * self.hd, bias=cfg.bias, init=init.normal())
        self.proj = slots.row(cfg.n_head * self.hd, cfg.n_embd, bias=cfg.bias, init=init.normal(init.residual_std))
        self.rotary = Rotary(cfg.max_seq_len, rope.model_frequencies(cfg)) if cfg.position == "rope" else None
        self.positions, self.core = slots.positions, slots.attention_core()
        self.dropout = cfg.dropout
        self.drop = slots.dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        qkv = self.qkv(x)[0]  # (b, t, (nh + 2 nkv) hd); t: the whole sequence also under sequence parallelism
        b, t = qkv.shape[:2]
        group = self.nh // self.nkv
        qkv = qkv.view(b, t, self.nkv, group + 2, self.hd)
        q = qkv[:, :, :, :group].reshape(b, t, self.nh, self.hd).transpose(1, 2)  # (b, nh, t, hd)
        k = qkv[:, :, :, group].transpose(1, 2)  # (b, nkv, t, hd)
        v = qkv[:, :, :, group + 1].transpose(1, 2)
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            pos = self.positions(t, start, x.device)
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        if cache is not None:
            k, v = cache.update(k, v)  # (b, nkv, start + t, hd)
        mask, causal = None, start == 0 and t > 1
        if start > 0 and t > 1:  # a chunk after cached tokens: causal within the chunk
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = self.core(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0,
                      enable_gqa=self.nkv != self.nh)  # (b, nh, t, hd)
        y = y.transpose(1, 2).reshape(b, t, self.nh * self.hd)
        return self.drop(self.proj(y)[0])


class GeluMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, slots: Slots, init: LayerInit, hidden: int):
        super().__init__()
        self.fc = slots.column(cfg.n_embd, hidden, bias=cfg.bias, init=init.normal())
        self.proj = slots.row(hidden, cfg.n_embd, bias=cfg.bias, init=init.normal(init.residual_std))
        self.drop = slots.dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x)[0], approximate="tanh"))[0])


class SwiGLUMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, slots: Slots, init: LayerInit, hidden: int):
        super().__init__()
        self.gate = slots.column(cfg.n_embd, hidden, bias=cfg.bias, init=init.normal())
        self.up = slots.column(cfg.n_embd, hidden, bias=cfg.bias, init=init.normal())
        self.down = slots.row(hidden, cfg.n_embd, bias=cfg.bias, init=init.normal(init.residual_std))
        self.drop = slots.dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.down(F.silu(self.gate(x)[0]) * self.up(x)[0])[0])


MLPS = {"gelu": GeluMLP, "swiglu": SwiGLUMLP}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, slots: Slots, init: LayerInit, ffn_hidden: int):
        super().__init__()
        self.ln_1 = slots.norm(cfg)
        self.attn = Attention(cfg, slots, init)
        self.ln_2 = slots.norm(cfg)
        self.mlp = MLPS[cfg.activation](cfg, slots, init, ffn_hidden)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class Norm(nn.Module):
    """The final norm, a layer of its own so a pipeline's last stage can hold it."""

    def __init__(self, cfg: ModelConfig, slots: Slots):
        super().__init__()
        self.ln_f = slots.norm(cfg)

    def forward(self, x):
        return self.ln_f(x)


class Output(nn.Module):
    """Hidden states to vocab-parallel logits (b, t, v/p), or with labels straight to the loss (the
    head fused with the cross entropy: full logits never exist); the weight is the embedding's when tied.

    Rows from `vocab_size` on pad the table (model.vocab_multiple) and never take probability mass:
    the loss leaves them out, and their logits are the dtype's lowest value (a zero pad row would
    score 0, far above real GPT-2 logits).
    """

    def __init__(self, cfg: ModelConfig, slots: Slots, init: LayerInit, vocab: int, vocab_size: int):
        super().__init__()
        self.head = slots.vocab_head(cfg.n_embd, vocab, vocab_size=vocab_size, init=init.normal(),
                                     tied=cfg.tie_embeddings)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(x, weight, labels, weights)


class GPT(nn.Module):
    """The whole model in one process group stage: embedding -> blocks -> norm -> output."""

    def __init__(self, cfg: ModelConfig, slots: Slots, *, vocab: int, vocab_size: int, ffn_hidden: int, seed: int):
        """vocab: rows of the (padded) embedding table; vocab_size: the real vocabulary, the rest is padding."""
        super().__init__()
        self.cfg = cfg
        n = cfg.n_layer

        def init(i):
            return LayerInit(seed, i, cfg.init_std, n)

        self.embedding = Embedding(cfg, slots, init(0), vocab)
        self.blocks = nn.ModuleList(Block(cfg, slots, init(1 + i), ffn_hidden) for i in range(n))
        self.norm = Norm(cfg, slots)
        self.output = Output(cfg, slots, init(n + 2), vocab, vocab_size)
        self.activation_checkpointing = False
        self.recompute = slots.recompute

    def forward(self, idx: torch.Tensor, caches=None, labels: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (b, t) -> vocab-parallel logits (b, t, v/p); with labels and weights (b, t), the loss
        sum_i weights_i * cross_entropy_i (a scalar) without materialising the logits."""
        start = caches[0].length if caches else 0
        x = self.embedding(idx, start)
        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and self.training:
                x = self.recompute(block, x)
            else:
                x = block(x, caches[i] if caches else None)
        tied = self.embedding.wte.weight if self.cfg.tie_embeddings else None
        return self.output(self.norm(x), tied, labels, weights)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token (b, t) from vocab-parallel logits (b, t, v/p) as `GPT(idx)` returns them,
    the full logits never gathered. Training and gpt-eval use the fused loss (`GPT(idx, labels=,
    weights=)`) instead, which never materialises the logits at all."""
    from gpt.parallel.megatron_core import tensor_parallel

    return tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)


def layer_parameters(cfg: ModelConfig, vocab: int, ffn_hidden: int, tensor: int = 1) -> list[int]:
    """Parameters of each entry of the layer list [Embedding, Block x n_layer, Norm, Output] on one
    tensor-parallel rank (tensor=1: the whole model). The tied Output holds no weight of its own.

    Column-parallel weights and biases and the embedding rows are split over the tensor group;
    norms, row-parallel biases and learned positions are replicated (as in slots.py).
    """
    h, t, hd = cfg.n_embd, tensor, cfg.n_embd // cfg.n_head
    n_kv = cfg.n_kv_head or cfg.n_head
    norm = h * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    b = 1 if cfg.bias else 0
    qkv = (cfg.n_head + 2 * n_kv) * hd  # fused q, k, v output features
    attn = (h * qkv + b * qkv + cfg.n_head * hd * h) // t + b * h
    n_in = 2 if cfg.activation == "swiglu" else 1  # column-parallel input matrices: gate+up, or fc
    mlp = (n_in * h * ffn_hidden + n_in * b * ffn_hidden + ffn_hidden * h) // t + b * h
    block = 2 * norm + attn + mlp
    emb = vocab * h // t + (cfg.max_seq_len * h if cfg.position == "learned" else 0)
    head = 0 if cfg.tie_embeddings else vocab * h // t
    return [emb] + [block] * cfg.n_layer + [norm, head]


def count_parameters(cfg: ModelConfig, vocab: int, ffn_hidden: int) -> int:
    """Parameters of the whole (unsplit) model, embeddings counted once when tied."""
    return sum(layer_parameters(cfg, vocab, ffn_hidden))


def flops_per_token(cfg: ModelConfig, vocab: int, ffn_hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding matmul params + output head) + attention (PaLM appendix B)."""
    h, n_kv, hd = cfg.n_embd, cfg.n_kv_head or cfg.n_head, cfg.n_embd // cfg.n_head
    n_mats = 3 if cfg.activation == "swiglu" else 2
    matmul = cfg.n_layer * (h * (cfg.n_head + 2 * n_kv) * hd + cfg.n_head * hd * h + n_mats * h * ffn_hidden)
    matmul += vocab * h
    attention = cfg.n_layer * 2 * cfg.n_head * hd * seq_len  # QK^T and AV, causal half counted as full (convention)
    return 6.0 * matmul + 6.0 * attention

