"""The fused head + cross entropy (gpt/model/loss.py) against the plain computation it replaces.

Reference: F.linear to full logits, F.cross_entropy per token, times the weights, summed; gradients
by autograd through it. fp32: the same sums in chunks and another order, ~1e-7 relative (we allow
1e-5 on the loss, 1e-5 absolute on gradients of size ~1e-2..1). bf16 (autocast): the matmuls round
to 8 mantissa bits, ~4e-3 relative per logit; we allow 2e-2 relative on the loss. A wrong gradient
(a missing weight, softmax not normalised, a dropped chunk) is off by O(1).
"""

import pytest
import torch
import torch.nn.functional as F

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.model.build import build_model, model_shape
from gpt.model.loss import linear_cross_entropy
from gpt.parallel import context as parallel

N, H, V, REAL = 45, 16, 64, 57  # tokens, hidden, table rows, real vocabulary (7 padding rows)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g, requires_grad=True)
    w = (torch.randn(V, H, generator=g) * 0.5).requires_grad_(True)
    labels = torch.randint(0, REAL, (N,), generator=g)
    weights = torch.rand(N, generator=g) * (torch.rand(N, generator=g) > 0.3)  # some tokens masked out
    return x, w, labels, weights


def _reference(x, w, labels, weights):
    return (F.cross_entropy(F.linear(x, w[:REAL]), labels, reduction="none") * weights).sum()


@pytest.mark.parametrize("chunk", [1, 7, N, 1000])
def test_loss_and_gradients_match_the_unfused_loss(chunk):
    x, w, labels, weights = _inputs()
    ref = _reference(x, w, labels, weights)
    gx, gw = torch.autograd.grad(ref * 3.0, (x, w))
    out = linear_cross_entropy(x, w, labels, weights, vocab_size=REAL, chunk=chunk)
    ax, aw = torch.autograd.grad(out * 3.0, (x, w))  # backward scales by the incoming gradient
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(ax, gx, rtol=0, atol=1e-5)
    torch.testing.assert_close(aw, gw, rtol=0, atol=1e-5)
    assert not aw[REAL:].any()  # padding rows: no probability mass, no gradient


def test_padding_rows_take_no_probability_mass():
    """Padding rows scoring far above every real logit change nothing (they are left out)."""
    x, w, labels, weights = _inputs()
    with torch.no_grad():
        w[REAL:] = x.detach().mean(0) * 1e3  # would dominate every softmax
    out = linear_cross_entropy(x, w, labels, weights, vocab_size=REAL)
    torch.testing.assert_close(out, _reference(x, w, labels, weights), rtol=1e-5, atol=0)


def test_bf16_autocast_is_close_and_keeps_fp32_gradients():
    x, w, labels, weights = _inputs()
    ref = _reference(x, w, labels, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(x, w, labels, weights, vocab_size=REAL)
    gx, gw = torch.autograd.grad(out, (x, w))
    assert out.dtype == torch.float32 and gx.dtype == gw.dtype == torch.float32
    assert abs(float(out.detach()) - float(ref.detach())) / float(ref.detach()) < 2e-2


def test_no_gradient_work_without_autograd():
    x, w, labels, weights = _inputs()
    with torch.no_grad():
        out = linear_cross_entropy(x, w, labels, weights, vocab_size=REAL)
    assert out.grad_fn is None
    torch.testing.assert_close(out, _reference(x, w, labels, weights).detach(), rtol=1e-5, atol=0)


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


@pytest.mark.parametrize("tied", [True, False])
def test_model_loss_keeps_no_logits_of_the_whole_vocabulary(world_of_one, tied):
    """GPT(idx, labels=, weights=) equals the loss of its logits, and what autograd keeps for the
    backward holds nothing larger than the head's weight (v x h: its gradient, computed in the
    forward), far below tokens x vocabulary (what the unfused loss keeps: the logits' softmax)."""
    cfg = ModelConfig(n_layer=1, n_head=4, n_embd=32, max_seq_len=32, tie_embeddings=tied)
    shape = model_shape(cfg, 4000)  # the head dominates: v=4096 rows against h=32
    model = build_model(cfg, shape, seed=1, tp_group=world_of_one.tp_group)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4000, (4, 32), generator=g)
    labels, weights = torch.randint(0, 4000, (4, 32), generator=g), torch.full((4, 32), 1 / 128)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, labels=labels, weights=weights)
    assert max(saved) <= shape.padded_vocab * 32 < 4 * 32 * shape.padded_vocab / 2, max(saved)
    from gpt.model.gpt import token_losses

    with torch.no_grad():
        reference = (token_losses(model(x), labels) * weights).sum()
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=0)


@pytest.mark.parametrize("chunk", [7, 1000])
def test_bf16_weights_keep_bf16_gradients_between_forward_and_backward(chunk):
    """DeepSpeed's bf16 engine: bf16 weights and inputs, no autocast. W's gradient is kept in bf16 from
    forward to backward (never a second fp32 copy of the table's size), still close to fp32."""
    x, w, labels, weights = _inputs()
    gx, gw = torch.autograd.grad(_reference(x, w, labels, weights) * 0.5, (x, w))
    xb, wb = x.detach().bfloat16().requires_grad_(True), w.detach().bfloat16().requires_grad_(True)
    out = linear_cross_entropy(xb, wb, labels, weights, vocab_size=REAL, chunk=chunk)
    assert [t.dtype for t in out.grad_fn.saved_tensors] == [torch.bfloat16, torch.bfloat16]
    ax, aw = torch.autograd.grad(out * 0.5, (xb, wb))
    assert ax.dtype == aw.dtype == torch.bfloat16 and not aw[REAL:].any()
    torch.testing.assert_close(aw.float(), gw, rtol=0, atol=3e-2 * float(gw.abs().max()))
    torch.testing.assert_close(ax.float(), gx, rtol=0, atol=3e-2 * float(gx.abs().max()))
    with pytest.raises(RuntimeError, match="runs once"):
        out2 = linear_cross_entropy(xb, wb, labels, weights, vocab_size=REAL, chunk=chunk)
        out2.backward(retain_graph=True)
        out2.backward()


def test_default_chunks_are_equal_and_at_most_a_quarter_over_the_cap():
    from gpt.model.loss import CHUNK_ELEMENTS, chunk_tokens

    for tokens, rows in [(1024, 50304), (4096, 128256), (8192, 50304), (5, 64), (1, 1), (100_000, 3)]:
        cap = max(1, CHUNK_ELEMENTS // rows)
        c = chunk_tokens(tokens, rows)
        pieces = -(-tokens // c)
        assert c <= max(1, cap * 5 // 4) and tokens - (pieces - 1) * c >= c - pieces, (tokens, rows, c)
    assert chunk_tokens(1024, 50304) == 342  # 3 chunks of GPT-2's vocabulary, not 333 + 333 + 333 + 25


@pytest.mark.parametrize("chunk", [8, None])
def test_a_compiled_caller_runs_a_chunked_loss_eagerly(chunk):
    """torch.compile breaks its graph at a loss of several chunks: traced, inductor kept every chunk's
    buffers alive at once (2.9 GB instead of 0.35 GB for 16K tokens of GPT-2's vocabulary). One chunk
    (here all 45 tokens) is traced with its caller. The ops around it are compiled either way, and
    the result is the eager one."""
    x, w, labels, weights = _inputs()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(x, w):
        return linear_cross_entropy(x * 2, w, labels, weights, vocab_size=REAL, chunk=chunk) * 3

    got = torch.compile(f, backend=backend)(x, w)
    got.backward()
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    want = f(x, w)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads, (x.grad, w.grad), rtol=1e-6, atol=1e-7)
    traced = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert any("mul" in t for t in traced), traced  # x * 2 and * 3 were compiled
    assert any("autograd_function" in t for t in traced) == (chunk is None), traced
