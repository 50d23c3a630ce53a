"""The output head and cross entropy fused, in chunks of tokens: the logits of the whole vocabulary
never exist at once, in fp32 or otherwise (Liger-Kernel's fused linear cross entropy, in torch ops).

    loss = sum_i w_i * (logsumexp_j(x_i . W_j) - x_i . W_{y_i})       x (n, h), W (v/p, h) this rank's rows

For each chunk of tokens the logits (c, v/p) are computed in the compute dtype (bf16 under autocast),
reduced in fp32 to the loss, and, when a gradient is wanted, turned at once into the gradients of x
and W (softmax - onehot, times w_i), so nothing of the chunk is kept for backward: backward only
scales the two gradients by the incoming scalar. Peak extra memory is one chunk of logits plus W's
gradient, against the full (n, v) logits, their fp32 copy and the saved softmax of an unfused loss;
no matmul is recomputed.

Vocab-parallel: W holds rows [first, first + v/p) of the table; the row max, the sum of exponentials
and the target logit are all-reduced over the tensor group per chunk (Megatron's vocab-parallel
cross entropy), and x's gradient, a partial sum over this rank's rows, is all-reduced once. Rows at
or past `vocab_size` pad the table: they are left out of the matmul, so they never take probability
mass and get a zero gradient.
"""

import math

import torch

from gpt.parallel import collectives

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MiB in fp32): large enough for efficient matmuls


def _all_reduce(t: torch.Tensor, group, op: str = "sum") -> None:
    """Over the tensor group; None (tensor size 1) means no communication (not the world group)."""
    if group is not None:
        collectives.all_reduce(t, op=op, group=group)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, labels, weights, first, vocab_size, group, chunk, dtype, need_grad, reduce_input_grad):
        # x (n, h), weight (v/p, h), labels (n,) global ids, weights (n,)
        with torch.autocast(x.device.type, enabled=False):  # dtypes are explicit below
            return _forward(ctx, x, weight, labels, weights, first, vocab_size, group, chunk, dtype, need_grad,
                            reduce_input_grad)

    @staticmethod
    def backward(ctx, grad_out):
        # fp32 or bf16 (see _kept): scaled in place, before any cast (fp16 loss scaling needs that)
        if getattr(ctx, "scaled", False):
            raise RuntimeError("the fused cross entropy's backward runs once (its saved gradients are scaled in "
                               "place): backward(retain_graph=True) twice is not supported")
        ctx.scaled = True
        grad_x, grad_w = ctx.saved_tensors
        gx, gw = grad_x.mul_(grad_out).to(ctx.x_dtype), grad_w.mul_(grad_out).to(ctx.w_dtype)
        return gx, gw, None, None, None, None, None, None, None, None, None


def _kept(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A gradient as kept from forward to backward: in its parameter's dtype when that is bf16 (fp32's
    range, so scaling it later loses nothing: 2 bytes per element instead of 4 for W's (v/p, h)
    gradient over the whole forward and backward), else in fp32 (fp16 must be scaled before its cast)."""
    return t.to(dtype) if dtype == torch.bfloat16 else t


def _forward(ctx, x, weight, labels, weights, first, vocab_size, group, chunk, dtype, need_grad, reduce_input_grad):
    n = x.shape[0]
    real = max(0, min(weight.shape[0], vocab_size - first))  # rows of the real vocabulary on this rank
    w = weight[:real].to(dtype)  # (r, h)
    xd = x.to(dtype)
    if need_grad:
        grad_x = torch.empty(n, x.shape[1], dtype=torch.float32, device=x.device)
        # One chunk has nothing to accumulate: its W gradient is written in W's dtype when the matmul runs
        # in it (bf16: no fp32 (v/p, h) buffer at all); several accumulate in fp32. Padding rows stay 0.
        direct = n <= chunk and dtype == weight.dtype == torch.bfloat16
        grad_w = torch.empty(weight.shape, dtype=weight.dtype if direct else torch.float32, device=x.device)
        grad_w[real if n else 0:].zero_()  # padding rows (and every row when there are no tokens)
    target = labels - first
    local = (target >= 0) & (target < real)  # (n,) this rank holds the target's row
    target = torch.where(local, target, 0)
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for s in range(0, n, chunk):
        xc, tc, lc, wc = xd[s:s + chunk], target[s:s + chunk], local[s:s + chunk], weights[s:s + chunk].float()
        logits = (xc @ w.t()).float()  # (c, r)
        if real:
            peak = logits.max(dim=-1).values
        else:
            peak = torch.full_like(wc, float("-inf"))
        _all_reduce(peak, group, "max")
        logits -= peak[:, None]
        picked = torch.where(lc, logits.gather(1, tc[:, None]).squeeze(1), 0.0) if real else torch.zeros_like(wc)
        probs = logits.exp_()  # in place: exp(logit - peak)
        sums = probs.sum(dim=-1)
        _all_reduce(picked, group)  # (c,) target logit - peak
        _all_reduce(sums, group)
        total += ((sums.log() - picked) * wc).sum()
        if need_grad and real:  # d loss / d logits = w_i * (softmax - onehot)
            probs.mul_((wc / sums)[:, None])
            probs.scatter_add_(1, tc[:, None], torch.where(lc, -wc, 0.0)[:, None])
            g = probs.to(dtype)
            grad_x[s:s + chunk] = g @ w
            rows = grad_w[:real]  # the first chunk writes them (beta=0 ignores what empty() left), later ones add
            if dtype == grad_w.dtype:
                rows.addmm_(g.t(), xc, beta=1.0 if s else 0.0)
            elif s:
                rows += g.t() @ xc
            else:
                rows.copy_(g.t() @ xc)
        elif need_grad:
            grad_x[s:s + chunk] = 0.0
    if need_grad:
        if reduce_input_grad:  # x is replicated: its gradient sums every rank's rows
            _all_reduce(grad_x, group)
        ctx.save_for_backward(_kept(grad_x, x.dtype), _kept(grad_w, weight.dtype))
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
    return total


def chunk_tokens(tokens: int, rows: int) -> int:
    """Tokens per chunk: about CHUNK_ELEMENTS logits, in equal chunks (a small last chunk would cost a
    whole pass over W's (rows, h) gradient for little work), up to 1/4 over to save a chunk (1024
    tokens of GPT-2's vocabulary: 3 chunks of 342, not 333 + 333 + 333 + 25)."""
    cap = max(1, CHUNK_ELEMENTS // max(1, rows))
    pieces = max(1, math.ceil(tokens / max(1, cap * 5 // 4)))
    return max(1, math.ceil(tokens / pieces))


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, *,
                         vocab_size: int, first: int = 0, group=None, chunk: int | None = None,
                         reduce_input_grad: bool = True) -> torch.Tensor:
    """sum_i weights_i * cross_entropy(x_i W^T, labels_i) over vocab-parallel rows W: a scalar.

    x (..., h) hidden states (replicated over the tensor group), weight (v/p, h) this rank's rows
    from `first`, labels/weights (...); `vocab_size` real rows in the whole table (the rest is padding).
    reduce_input_grad=False leaves x's gradient a partial sum over this rank's rows, for a caller
    whose own backward sums it (sequence parallelism's gather: a reduce-scatter).
    """
    h = x.shape[-1]
    x2, labels1, weights1 = x.reshape(-1, h), labels.reshape(-1), weights.reshape(-1)
    chunk = chunk or chunk_tokens(x2.shape[0], weight.shape[0])
    need_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    args = (x2, weight, labels1, weights1, first, vocab_size, group, chunk, _compute_dtype(x), need_grad,
            reduce_input_grad)
    if chunk < x2.shape[0] and torch.compiler.is_compiling():
        return _chunks_eagerly(*args)
    return _LinearCrossEntropy.apply(*args)


def _chunks_eagerly(*args) -> torch.Tensor:
    """Several chunks are never traced by torch.compile (a compiled model breaks its graph here):
    inductor keeps every chunk's buffers alive at once, 2.9 GB instead of 0.35 GB for 16K tokens of
    GPT-2's vocabulary. One chunk (a small vocabulary or few tokens) compiles with the model. Only
    reached while compiling: `torch.compiler.disable` imports torch._dynamo (seconds of start-up)."""
    return torch.compiler.disable(_LinearCrossEntropy.apply)(*args)
