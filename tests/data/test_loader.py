"""Packing, shuffling, validation split, data-parallel independence, resume and loss weights.

The shards here hold tokens equal to their own global address, so every sampled token says exactly
where it came from and packing can be checked token by token.
"""

import numpy as np
import pytest
import torch

from gpt.config.training import DataConfig
from gpt.data import Batch, build_loaders
from gpt.errors import DataError

from tests.data.helpers import write_address_shards

EOD = (1 << 24) - 1
LENGTHS = np.random.default_rng(0).integers(1, 120, size=300)   # 300 documents, ~18k tokens


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader") / "shards"
    # Several shards: sampling must cross file boundaries.
    write_address_shards(d, LENGTHS, shard_tokens=5000)
    return d


def loaders(path, *, seq_len=16, gbs=8, micro=2, rank=0, dp=1, seed=1, **data):
    data.setdefault("val_fraction", 0.05)
    return build_loaders(DataConfig(path=str(path), **data), seq_len=seq_len, global_batch_size=gbs,
                         micro_batch_size=micro, dp_rank=rank, dp_size=dp, seed=seed)


def global_tokens(loader, consumed) -> np.ndarray:
    """The rank's micro-batches joined: [grad_accum*micro, seq_len+1] tokens with the last label."""
    return np.concatenate([np.concatenate([b.tokens.numpy(), b.labels.numpy()[:, -1:]], axis=1)
                           for b in loader.global_batch(consumed)])


def doc_bounds():
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    return set(starts[:-1].tolist()), set((starts[1:] - 1).tolist())


def test_batch_shapes_and_shift(shards):
    train, _ = loaders(shards)
    batches = train.global_batch(0)
    assert len(batches) == 4 and all(isinstance(b, Batch) for b in batches)
    assert train.vocab_size == 1 << 24 and train.eod_id == EOD and train.grad_accum == 4
    for b in batches:
        assert b.tokens.shape == b.labels.shape == b.weights.shape == (2, 16)
        assert b.tokens.dtype == b.labels.dtype == torch.int64 and b.weights.dtype == torch.float32
        assert torch.equal(b.tokens[:, 1:], b.labels[:, :-1])
        assert torch.allclose(b.weights, torch.full((2, 16), 1 / (2 * 16)))


def test_samples_are_windows_of_documents_joined_by_eod(shards):
    train, _ = loaders(shards)
    firsts, lasts = doc_bounds()
    for consumed in range(0, 200, 8):
        for row in global_tokens(train, consumed):
            for a, b in zip(row[:-1], row[1:]):
                if a == EOD:
                    assert b in firsts, "after an end-of-document comes the start of a document"
                elif b == EOD:
                    assert a in lasts, "an end-of-document follows the last token of a document"
                else:
                    assert b == a + 1, "inside a document tokens are consecutive"


def test_each_epoch_trains_on_every_train_token_once_in_a_new_order(shards):
    from gpt.data.packing import split_chunks

    train, val = loaders(shards, gbs=8, micro=8)
    n = train.samples_per_epoch
    _, val_docs = split_chunks(len(LENGTHS), 0.05, where="test")    # one chunk per document here
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    val_tokens = set(np.concatenate([np.arange(starts[d], starts[d + 1]) for d in val_docs]).tolist())
    seen_val = set(np.concatenate([global_tokens(val, k * 8) for k in range(val.samples_per_epoch // 8 + 1)]).ravel())
    assert seen_val - {EOD} <= val_tokens, "validation batches hold validation documents only"
    orders = []
    for epoch in range(2):
        rows = np.concatenate([global_tokens(train, epoch * n + c) for c in range(0, n - n % 8, 8)])
        rows = rows[: n - n % 8]
        labels = rows[:, 1:].ravel()
        labels = labels[labels != EOD]
        assert len(np.unique(labels)) == len(labels), "no token is a label twice within an epoch"
        assert not (set(labels.tolist()) & val_tokens), "validation documents never reach training"
        train_tokens = int(LENGTHS.sum()) - len(val_tokens)
        # Missing: the stream's first token and its tail (< one sample), and the partial last batch.
        assert len(labels) >= train_tokens - 1 - 16 - (n % 8) * 16
        orders.append(rows[:, 0])
    assert not np.array_equal(orders[0], orders[1]), "every epoch is a different shuffle"


def test_batches_are_stateless_and_resume_at_the_next_sample(shards):
    run, _ = loaders(shards)
    history = [global_tokens(run, step * 8) for step in range(10)]
    resumed, _ = loaders(shards)   # a new process after loading consumed_samples=40 from a checkpoint
    for step in range(5, 10):
        assert np.array_equal(global_tokens(resumed, step * 8), history[step])
    assert np.array_equal(global_tokens(run, 3 * 8), history[3]), "asking again gives the same batch"
    assert not np.array_equal(history[0], history[1])


@pytest.mark.parametrize("dp", [2, 4])
def test_sample_order_does_not_depend_on_data_parallel_size(shards, dp):
    gbs, micro = 16, 2
    ref, _ = loaders(shards, gbs=gbs, micro=micro)
    ranks = [loaders(shards, gbs=gbs, micro=micro, rank=r, dp=dp)[0] for r in range(dp)]
    # Crosses an epoch boundary too.
    for consumed in (0, 48, ref.samples_per_epoch - 5):
        full = global_tokens(ref, consumed)                                  # [gbs, s+1] in global order
        per_rank = [rank.global_batch(consumed) for rank in ranks]
        ga = gbs // (micro * dp)
        assert all(len(b) == ga for b in per_rank)
        for k in range(ga):
            for r in range(dp):
                first = (k * dp + r) * micro
                b = per_rank[r][k]
                assert torch.equal(b.tokens, torch.from_numpy(full[first:first + micro, :-1]))
                assert torch.equal(b.labels, torch.from_numpy(full[first:first + micro, 1:]))


def test_validation_split_is_fixed_small_and_never_empty(shards, tmp_path):
    _, val1 = loaders(shards, seed=1)
    train2, val2 = loaders(shards, seed=2)
    train1, _ = loaders(shards, seed=1)
    for k in range(3):
        assert np.array_equal(global_tokens(val1, k * 8), global_tokens(val2, k * 8)), "val does not move with the seed"
    assert not np.array_equal(global_tokens(train1, 0), global_tokens(train2, 0)), "train order follows the seed"
    # 3 short documents, 1% held out: one document, and the val loader wraps around it forever.
    tiny = tmp_path / "tiny"
    write_address_shards(tiny, [5, 6, 7])
    train, val = loaders(tiny, val_fraction=0.01)
    assert val.samples_per_epoch >= 1
    for k in range(20):
        rows = global_tokens(val, k * 8)
        assert rows.shape == (8, 17)
    assert train.samples_per_epoch >= 1


def test_validation_errors_and_options(shards, tmp_path):
    one = tmp_path / "one"
    write_address_shards(one, [50])
    with pytest.raises(DataError, match=r"1 document.*data.val_fraction=0"):
        loaders(one)
    train, val = loaders(one, val_fraction=0.0)
    assert val is None and train.samples_per_epoch == 49 // 16
    train, val = loaders(one, val_path=str(shards), val_fraction=0.0)
    assert val.samples_per_epoch == (int(LENGTHS.sum()) + len(LENGTHS) - 1) // 16, "val_path is used whole"


def test_loss_mask_is_carried_and_weights_make_the_loss_dp_independent(tmp_path):
    d = tmp_path / "sft"
    # Train only on tokens whose address is odd (a stand-in for "response" tokens).
    write_address_shards(d, LENGTHS, mask_fn=lambda a: a % 2, shard_tokens=4000)
    gbs, micro = 8, 2
    token_loss = {}

    def loss(dp):
        total = 0.0
        for r in range(dp):
            loader = loaders(d, gbs=gbs, micro=micro, rank=r, dp=dp)[0]
            ga = loader.grad_accum
            rank_loss = 0.0
            for b in loader.global_batch(24):
                odd = (b.labels % 2 == 1) & (b.labels != EOD)
                assert torch.all((b.weights > 0) == (odd | (b.labels == EOD))), "mask 1 on odd tokens and on EOD"
                # a stand-in for the model's per-token loss, the same for a sample whichever rank holds it
                tl = torch.stack([token_loss.setdefault(tuple(row.tolist()), torch.rand(row.shape, dtype=torch.float64))
                                  for row in b.labels])
                rank_loss += float((tl * b.weights).sum()) / ga         # DeepSpeed: / grad_accum
            total += rank_loss / dp                                     # then the mean over ranks
        return total

    l1, l2, l4 = loss(1), loss(2), loss(4)
    # float32 weights: agreement to ~1e-7 relative
    assert l1 == pytest.approx(l2, rel=1e-6) and l1 == pytest.approx(l4, rel=1e-6)
    loader = loaders(d, gbs=gbs, micro=micro)[0]
    weights = torch.cat([b.weights for b in loader.global_batch(24)])
    assert float(weights.sum()) == pytest.approx(loader.grad_accum * 1, rel=1e-6)


def epoch_rows(samples, seq_len=16):
    """Every sample of epoch 0 in training order [samples_per_epoch, seq_len+1]."""
    return samples.samples(np.arange(samples.samples_per_epoch))[0]


@pytest.fixture(scope="module")
def coarse_shards(tmp_path_factory):
    """The same documents indexed in chunks of 16 (as sets of more than 4M documents are)."""
    from gpt.data import format as fmt

    d = tmp_path_factory.mktemp("coarse") / "shards"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fmt, "MAX_CHUNKS", 32)
        meta = write_address_shards(d, LENGTHS, shard_tokens=5000)
    assert meta["index"]["documents_per_chunk"] == 16
    return d


@pytest.mark.parametrize("which", ["shards", "coarse_shards"])
def test_documents_and_samples_are_shuffled(which, request):
    """Fails for a loader that packs documents in corpus order or visits samples in stream order."""
    shards = request.getfixturevalue(which)
    train, _ = loaders(shards, val_fraction=0.0)
    rows = epoch_rows(train.sources[0])
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    doc_of = {int(s): d for d, s in enumerate(starts[:-1])}
    # Around an EOD: the last token of one document, then the first of another: how often the corpus' next one?
    joins = [(int(r[i - 1]), int(r[i + 1])) for r in rows for i in range(1, len(r) - 1)
             if r[i] == EOD and r[i - 1] != EOD and r[i + 1] != EOD]
    assert len(joins) > 100
    next_doc = np.mean([doc_of[b] == int(np.searchsorted(starts, a, side="right")) for a, b in joins])
    assert next_doc < 0.05, f"{next_doc:.0%} of document joins follow the corpus order"
    # Consecutive samples in training order overlap by one token only if they are consecutive in the stream.
    contiguous = np.mean(rows[1:, 0] == rows[:-1, -1])
    assert contiguous < 0.05, f"{contiguous:.0%} of consecutive samples are consecutive in the stream"
    # No drift: the corpus position of a sample is uncorrelated with when it is trained on.
    position = np.where(rows[:, 0] == EOD, rows[:, 1], rows[:, 0]).astype(float)
    order = np.arange(len(rows), dtype=float)
    assert abs(np.corrcoef(np.argsort(np.argsort(position)), order)[0, 1]) < 0.15


def test_windows_keep_every_token_a_label_once_and_mix_chunks_from_all_over(shards):
    """Small shuffle windows (as a 15T-token corpus has relative to its size): still a permutation of the stream."""
    from gpt.data.packing import PackedSamples
    from gpt.data.shards import ShardSet

    s = ShardSet(shards)
    samples = PackedSamples(s, np.arange(s.num_chunks), 16, seed=5, window_samples=32)
    e = samples._epoch(0)
    assert len(e.bounds) - 1 > 20, "many windows"
    rows = epoch_rows(samples)
    labels = rows[:, 1:].ravel()
    labels = labels[labels != EOD]
    assert len(np.unique(labels)) == len(labels), "no token is a label twice"
    assert len(labels) >= LENGTHS.sum() - 17, "every token but the stream's tail is a label once"
    # A window's chunks are scattered over the corpus, and its samples come out shuffled.
    chunks = e.order[e.bounds[10]:e.bounds[11]]
    assert np.ptp(chunks) > len(chunks) * 5
    assert np.mean(rows[1:, 0] == rows[:-1, -1]) < 0.2
    # Order independent of everything but (seed, index): a new object gives the same rows.
    again = PackedSamples(ShardSet(shards), np.arange(s.num_chunks), 16, seed=5, window_samples=32)
    assert np.array_equal(again.samples(np.arange(900, 1000))[0], rows[900:1000])
