"""Replicated parameters must stay replicated: the check behind train.check_replicas_every.

Under tensor parallelism every rank of a tensor group holds its own copy of the parameters that are
not split (norms, row-parallel biases, learned positions). Nothing synchronises them: they stay
equal only because every rank computes bit-identical gradients for them (identical inputs,
identical dropout masks on replicated activations, gpt/parallel/rng.py). When that breaks they
drift apart silently; this check compares a sha256 of each copy across the group (as Megatron's
`--check-weight-hash-across-dp-replicas-interval` does across data replicas) and names the first
that differs.
"""

import hashlib

from gpt.checkpoint import zero_state
from gpt.checkpoint.save import partition_dim
from gpt.errors import TrainingError
from gpt.parallel import collectives


def replicated_digests(engine) -> list[tuple[str, str]]:
    """(name, sha256) of this rank's copy of every parameter replicated over the tensor group: the
    fp32 values this rank holds (its ZeRO partition, or all of it) and the weight forward() uses."""
    out = []
    for name, p in engine.named_parameters():
        if partition_dim(p) is not None:
            continue
        h = hashlib.sha256()
        if zero_state.held(p) is not None:
            h.update(zero_state.weight(p).detach().float().cpu().numpy().tobytes())
        if not hasattr(p, "ds_id"):  # ZeRO-3's own copy is its partition, hashed above
            h.update(p.detach().float().cpu().numpy().tobytes())
        out.append((name, h.hexdigest()))
    return out


def check_replicas(engine, step: int) -> None:
    """Raise TrainingError if any tensor-replicated parameter differs between tensor ranks (collective)."""
    ctx = engine.ctx
    if ctx.layout.tensor == 1:
        return
    mine = replicated_digests(engine)
    every = collectives.all_gather_object(mine, group=ctx.tp_group)
    for i, (name, _) in enumerate(mine):
        differing = [r for r, digests in enumerate(every) if digests[i][1] != every[0][i][1]]
        if differing:
            raise TrainingError(f"step {step}: {name} differs between tensor ranks 0 and {differing[0]} of the tensor "
                                f"group of rank {ctx.rank} (replicated parameters must stay bit-identical: their "
                                f"dropout masks or gradients disagree)")
