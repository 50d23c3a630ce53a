"""Construction: every tensor rank holds exactly its slice of the one-process weights, drawn without
drawing the rest; loading paths draw nothing.

A rank of tensor size t is built here in one process, on the meta device, with a layout-only group
(megatron asks it for size() and rank() only), then materialised: the same classes, shapes and
init calls as under torchrun. The vocabulary (257 -> 384 rows) and the widths put rank boundaries
inside init tiles (TILE=256 rows), so tiles cut between ranks are checked too.
"""

import subprocess
import sys

import pytest
import torch
from helpers import env_for_subprocess

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.model.build import build_model, materialize, model_shape
from gpt.parallel import context as parallel

ARCHS = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=64, max_seq_len=32),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=32, norm="rmsnorm", activation="swiglu",
                  position="rope", tie_embeddings=False, bias=False),
}


class LayoutGroup:
    """The tensor group of a layout, for building one rank's modules in this process."""

    def __init__(self, size: int, rank: int):
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


def rank_model(cfg, shape, tp: int, rank: int):
    return build_model(cfg, shape, seed=7, tp_size=tp, tp_group=LayoutGroup(tp, rank) if tp > 1 else None)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tp", [2, 4])
def test_every_tensor_rank_holds_its_slice_of_the_one_process_weights(arch, tp, world_of_one):
    cfg = ModelConfig(**ARCHS[arch])
    shape = model_shape(cfg, 257)
    whole = dict(rank_model(cfg, shape, 1, 0).named_parameters())
    for rank in range(tp):
        for name, p in rank_model(cfg, shape, tp, rank).named_parameters():
            dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
            expected = whole[name] if dim is None else whole[name].chunk(tp, dim=dim)[rank]
            assert torch.equal(p, expected), (name, tp, rank)


def test_weights_are_the_recipes_normal_draws(world_of_one):
    """Not zeros or a constant: N(0, init_std), residual projections N(0, init_std / sqrt(2 n_layer))."""
    cfg = ModelConfig(**ARCHS["gpt2"], init_std=0.02)
    model = rank_model(cfg, model_shape(cfg, 257), 1, 0)
    assert model.embedding.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, model.blocks[1].attn.qkv.weight)
    assert torch.all(model.blocks[0].ln_1.weight == 1) and torch.all(model.blocks[0].attn.qkv.bias == 0)


def test_a_tensor_rank_draws_only_its_tiles(world_of_one, tiles_drawn):
    """A wider model (tensors of several tiles): rank r of 4 draws about a quarter of the one-process
    tiles; at most one extra tile per split tensor where a rank boundary cuts a tile."""
    cfg = ModelConfig(n_layer=2, n_head=8, n_embd=512, max_seq_len=64)
    shape = model_shape(cfg, 4000)  # 4096 rows: 16 tiles, 4 per rank of 4
    rank_model(cfg, shape, 1, 0)
    one = tiles_drawn["tiles"]
    for rank in range(4):
        tiles_drawn["tiles"] = 0
        model = rank_model(cfg, shape, 4, rank)
        split = sum(1 for p in model.parameters() if getattr(p, "tensor_model_parallel", False))
        assert tiles_drawn["tiles"] <= one / 4 + split, (rank, tiles_drawn["tiles"], one)
    assert one > 4 * split


def test_building_for_a_checkpoint_draws_nothing(world_of_one, tiles_drawn):
    cfg = ModelConfig(**ARCHS["llama"])
    model = build_model(cfg, model_shape(cfg, 257), seed=7, init=False)
    assert tiles_drawn["tiles"] == 0
    assert all(torch.all(p == 0) for p in model.parameters())  # finite for the optimizer's first step
    assert model.blocks[0].attn.rotary.cos.device.type == "cpu"  # buffers recomputed, not left on meta


def test_meta_model_materialises_on_demand(world_of_one):
    cfg = ModelConfig(**ARCHS["gpt2"])
    shape = model_shape(cfg, 257)
    meta = build_model(cfg, shape, seed=7, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    materialize(meta, device="cpu", dtype=torch.bfloat16)
    direct = build_model(cfg, shape, seed=7)
    for (name, a), (_, b) in zip(meta.named_parameters(), direct.named_parameters()):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b.to(torch.bfloat16)), name
        assert getattr(a, "partition_dim", None) == getattr(b, "partition_dim", None), name


def test_generation_loads_without_drawing_or_megatron(base_run, tiles_drawn):
    """gpt-generate / gpt-eval's loader: the checkpoint's tensors become the parameters."""
    from gpt.checkpoint import format as fmt
    from gpt.checkpoint.reader import full_state_dict
    from gpt.generation.loading import load_model

    loaded = load_model(base_run, "cpu")
    assert tiles_drawn["tiles"] == 0
    saved = full_state_dict(fmt.resolve(base_run, verify=False))
    for name, p in loaded.model.named_parameters():
        assert torch.equal(p, saved[name]), name
    # In a fresh process (this one has megatron from other tests): loading and a forward need no
    # megatron-core, whose import alone was most of gpt-generate's time to first token.
    code = ("import sys, torch; from gpt.generation.loading import load_model; "
            f"m = load_model({str(base_run)!r}, 'cpu').model; m(torch.zeros(1, 4, dtype=torch.long)); "
            "print(sorted(k for k in sys.modules if k.startswith('megatron')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_for_subprocess(),
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_a_tile_drawn_in_place_equals_the_tile_drawn_and_copied():
    """Normal.fill draws a tile wholly inside an fp32 slice straight into it, others into a temporary
    then copied: both give the same values (a bf16 slice takes the copy path for every tile)."""
    from gpt.model.slots import TILE, Normal

    init = Normal(key=(7, 3, 1), std=0.02)
    rows = 3 * TILE + 17  # whole tiles and a cut one
    direct = torch.empty(rows, 40)
    init.fill(direct, dim=0, start=0, full=rows)
    copied = torch.empty(rows, 40, dtype=torch.float64)  # never in place: every tile copied
    init.fill(copied, dim=0, start=0, full=rows)
    assert torch.equal(direct, copied.float())
    part = torch.empty(TILE + 5, 40)  # rows [TILE - 3, 2 TILE + 2): two cut tiles and none whole
    init.fill(part, dim=0, start=TILE - 3, full=rows)
    assert torch.equal(part, direct[TILE - 3:2 * TILE + 2])
