"""Blending shard sets by weight: exact proportions, own shuffles per component, blended validation."""

import numpy as np
import pytest

from gpt.config.training import DataConfig
from gpt.data import build_loaders
from gpt.data.blend import BlendSchedule, period_counts
from gpt.errors import ConfigError, DataError

from tests.data.helpers import AddressTokenizer, write_address_shards

OFFSET_B = 1 << 20   # component b's tokens are its addresses + this, so every token names its component
EOD = AddressTokenizer().eod_id


@pytest.mark.parametrize("weights,counts", [([0.7, 0.3], [7, 3]), ([2, 1], [2, 1]), ([0.5, 0.25, 0.25], [2, 1, 1]),
                                            ([1], [1])])
def test_period_is_the_smallest_whole_number_of_samples(weights, counts):
    assert period_counts(weights) == counts


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.5, 0.3, 0.2], [0.123457, 0.876543], [1, 1, 1, 1, 3]])
def test_every_window_holds_each_component_in_proportion(weights):
    schedule = BlendSchedule(weights)
    w = np.asarray(weights) / sum(weights)
    component, local = schedule.locate(np.arange(5 * schedule.period))
    for k in range(len(weights)):
        mine = component == k
        # Each component's samples are numbered 0, 1, 2, ... in blend order: nothing skipped or repeated.
        assert np.array_equal(local[mine], np.arange(mine.sum()))
        # count - expected over any window = difference of two prefix deviations
        prefix = np.concatenate([[0], np.cumsum(mine)]) - w[k] * np.arange(len(mine) + 1)
        assert prefix.max() - prefix.min() < 2, "within two samples over any window (within one for two components)"
        if len(weights) == 2:
            assert prefix.max() - prefix.min() <= 1


def test_batches_of_a_multiple_of_the_period_are_exact():
    schedule = BlendSchedule([0.7, 0.3])
    component, _ = schedule.locate(np.arange(10 * 100))
    per_batch = component.reshape(100, 10)
    assert np.all((per_batch == 0).sum(1) == 7) and np.all((per_batch == 1).sum(1) == 3)


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    rng = np.random.default_rng(1)
    write_address_shards(root / "a", rng.integers(1, 60, 200))
    write_address_shards(root / "b", rng.integers(1, 60, 40), offset=OFFSET_B)   # much smaller: wraps epochs
    return root


def blend_loaders(root, *, dp=1, rank=0, gbs=20, micro=2, **kw):
    cfg = DataConfig(path=None, blend=[[0.7, str(root / "a")], [0.3, str(root / "b")]], **kw)
    return build_loaders(cfg, seq_len=8, global_batch_size=gbs, micro_batch_size=micro, dp_rank=rank, dp_size=dp, seed=3)


def rows(loader, consumed):
    return np.concatenate([b.tokens.numpy() for b in loader.global_batch(consumed)])


def component_of(row):
    real = row[row != EOD]
    return int(real[0] >= OFFSET_B)


def test_blend_loader_draws_each_component_by_weight_across_epochs(two_sets):
    train, val = blend_loaders(two_sets)
    n_b = train.sources[1].samples_per_epoch
    steps = 3 * n_b // 6 + 2    # component b goes through about three epochs
    for step in range(steps):
        comps = [component_of(r) for r in rows(train, step * 20)]
        assert comps.count(0) == 14 and comps.count(1) == 6
    assert val is not None
    comps = [component_of(r) for r in rows(val, 0)]
    assert comps.count(0) == 14 and comps.count(1) == 6, "validation blends the components' val splits alike"


def test_blend_is_data_parallel_independent(two_sets):
    ref, _ = blend_loaders(two_sets)
    ranks = [blend_loaders(two_sets, dp=2, rank=r)[0] for r in range(2)]
    full = rows(ref, 40)
    parts = [[b.tokens.numpy() for b in r.global_batch(40)] for r in ranks]
    rebuilt = np.concatenate([parts[r][k] for k in range(len(parts[0])) for r in range(2)])
    assert np.array_equal(rebuilt, full)


def test_blend_errors(two_sets, tmp_path):
    with pytest.raises(ConfigError, match=r"data.blend\[1\]"):
        build_loaders(DataConfig(blend=[[1, str(two_sets / "a")], [0, str(two_sets / "b")]]), seq_len=8,
                      global_batch_size=4, micro_batch_size=4, dp_rank=0, dp_size=1, seed=0)
    other = tmp_path / "other"
    write_address_shards(other, [10, 20, 30])
    meta = other / "metadata.json"
    meta.write_text(meta.read_text().replace('"vocab_size": 16777216', '"vocab_size": 16777217'))
    with pytest.raises(DataError, match="same tokenizer"):
        build_loaders(DataConfig(blend=[[1, str(two_sets / "a")], [1, str(other)]]), seq_len=8,
                      global_batch_size=4, micro_batch_size=4, dp_rank=0, dp_size=1, seed=0)
