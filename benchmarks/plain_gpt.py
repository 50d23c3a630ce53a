"""The baseline every speed benchmark compares against: a GPT in plain PyTorch, nanoGPT's way.

Plain torch layers only (nn.Linear, nn.Embedding, nn.LayerNorm / nn.RMSNorm, F.scaled_dot_product_attention,
F.cross_entropy), torch.optim.AdamW, no framework code in the step. It computes the same function as
gpt's model for both families gpt has (GPT-2: pre-LayerNorm, learned positions, tanh GELU; Llama:
RMSNorm, rotate-half RoPE, SwiGLU, grouped-query attention), so `load_from_gpt` can copy a gpt
model's weights in (the fused qkv rows are laid out per kv head [q x n_head/n_kv, k, v], as gpt
stores them) and the two start from the same init; their loss curves can be compared step by step.
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope_tables(head_dim: int, length: int, theta: float):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, m, ffn: int):
        super().__init__()
        h, self.nh, self.nkv = m.n_embd, m.n_head, m.n_kv_head or m.n_head
        self.hd = h // self.nh
        norm = (lambda: nn.RMSNorm(h, eps=m.norm_eps)) if m.norm == "rmsnorm" else \
            (lambda: nn.LayerNorm(h, eps=m.norm_eps, bias=m.bias))
        self.ln_1, self.ln_2 = norm(), norm()
        self.c_attn = nn.Linear(h, (self.nh + 2 * self.nkv) * self.hd, bias=m.bias)
        self.c_proj = nn.Linear(h, h, bias=m.bias)
        self.swiglu = m.activation == "swiglu"
        if self.swiglu:
            self.w_gate = nn.Linear(h, ffn, bias=m.bias)
            self.w_up = nn.Linear(h, ffn, bias=m.bias)
        else:
            self.c_fc = nn.Linear(h, ffn, bias=m.bias)
        self.mlp_proj = nn.Linear(ffn, h, bias=m.bias)

    def forward(self, x, rope):
        b, t, _ = x.shape
        g = self.nh // self.nkv
        qkv = self.c_attn(self.ln_1(x)).view(b, t, self.nkv, g + 2, self.hd)
        q = qkv[:, :, :, :g].reshape(b, t, self.nh, self.hd).transpose(1, 2)
        k, v = qkv[:, :, :, g].transpose(1, 2), qkv[:, :, :, g + 1].transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=g > 1)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, self.nh * self.hd))
        z = self.ln_2(x)
        z = F.silu(self.w_gate(z)) * self.w_up(z) if self.swiglu else F.gelu(self.c_fc(z), approximate="tanh")
        return x + self.mlp_proj(z)


class PlainGPT(nn.Module):
    def __init__(self, m, vocab: int, ffn: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, m.n_embd)
        self.wpe = nn.Embedding(m.max_seq_len, m.n_embd) if m.position == "learned" else None
        if m.position == "rope":
            cos, sin = rope_tables(m.n_embd // m.n_head, m.max_seq_len, m.rope_theta)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(m, ffn) for _ in range(m.n_layer))
        self.ln_f = nn.RMSNorm(m.n_embd, eps=m.norm_eps) if m.norm == "rmsnorm" else \
            nn.LayerNorm(m.n_embd, eps=m.norm_eps, bias=m.bias)
        self.lm_head = nn.Linear(m.n_embd, vocab, bias=False)
        if m.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # nanoGPT's init
            if p.dim() >= 2:
                resid = name.endswith(("c_proj.weight", "mlp_proj.weight"))
                nn.init.normal_(p, 0.0, m.init_std / math.sqrt(2 * m.n_layer) if resid else m.init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(t, device=idx.device))
        else:
            rope = self.cos[:t].to(x.dtype), self.sin[:t].to(x.dtype)
        for block in self.blocks:
            x = block(x, rope)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def from_config(m, vocab: int) -> PlainGPT:
    """The plain model of gpt's `model.*` config; `vocab` rows in the embedding table."""
    from gpt.config.validate import ffn_hidden

    return PlainGPT(m, vocab, ffn_hidden(m))


OURS = {"ln_1": "ln_1", "c_attn": "attn.qkv", "c_proj": "attn.proj", "ln_2": "ln_2", "c_fc": "mlp.fc",
        "w_gate": "mlp.gate", "w_up": "mlp.up", "mlp_proj": "mlp.proj"}
TOP = {"wte.weight": "embedding.wte.weight", "wpe.weight": "embedding.wpe.weight", "ln_f.weight": "norm.ln_f.weight",
       "ln_f.bias": "norm.ln_f.bias", "lm_head.weight": "output.head.weight"}


@torch.no_grad()
def load_from_gpt(plain: PlainGPT, state: dict) -> None:
    """Copy gpt's one-process state dict (its parameter names) into the plain model."""
    swiglu = any(".mlp.down." in k for k in state)
    for name, p in plain.named_parameters():
        if name.startswith("blocks."):
            _, i, mod, kind = name.split(".")
            ours = "mlp.down" if mod == "mlp_proj" and swiglu else OURS[mod]
            src = f"blocks.{i}.{ours}.{kind}"
        else:
            src = TOP[name]
        p.copy_(state[src])


def make_step(model: PlainGPT, *, lr: float, betas, weight_decay: float, grad_clip: float, compile: bool = False,
              autocast: torch.dtype | None = None, fused: bool | None = None):
    """step(tokens, labels, lr) -> loss tensor: set lr, forward, backward, clip, AdamW, zero_grad (nanoGPT's loop)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    device = next(model.parameters()).device.type
    if fused is None:
        fused = device == "cuda"  # nanoGPT: fused AdamW where it is available (CUDA)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
    fwd = torch.compile(model) if compile else model

    def step(tokens, labels, lr=lr):
        for g in opt.param_groups:
            g["lr"] = lr
        ctx = torch.autocast(device, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with ctx:
            loss = fwd(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step
