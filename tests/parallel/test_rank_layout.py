"""megatron-core's process groups and DeepSpeed's pipeline topology number ranks the same way.

Our tensor/data groups come from megatron `parallel_state` (dense engine, data loader, gradient
norm); a pipelined run's data-parallel all-reduce and stage placement come from DeepSpeed's
PipeModelDataParallelTopology. If the two disagreed, a rank would train on another replica's data
or all-reduce with the wrong peers. Both are pure arithmetic, so every layout is checked here.
"""

import pytest
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core.parallel_state import RankGenerator

from gpt.parallel.context import RANK_ORDER

LAYOUTS = [(t, d, p) for t in (1, 2, 4) for d in (1, 2, 3) for p in (1, 2, 4)]


def megatron_groups(t, d, p, axis):
    return sorted(sorted(g) for g in RankGenerator(tp=t, ep=1, dp=d, pp=p, cp=1, order=RANK_ORDER).get_ranks(axis))


def deepspeed_groups(t, d, p, axis):
    topo = PipeModelDataParallelTopology(num_pp=p, num_mp=t, num_dp=d)
    return sorted(sorted(g) for g in topo.get_axis_comm_lists(axis))


@pytest.mark.parametrize("t, d, p", LAYOUTS)
def test_same_groups(t, d, p):
    for ours, theirs in (("tp", "model"), ("dp", "data"), ("pp", "pipe")):
        assert megatron_groups(t, d, p, ours) == deepspeed_groups(t, d, p, theirs), (ours, t, d, p)


@pytest.mark.parametrize("t, d, p", [(2, 2, 2), (2, 3, 2)])
def test_tensor_fastest_then_data_then_pipeline(t, d, p):
    """The documented order: rank = tensor + T * (data + D * pipeline)."""
    topo = PipeModelDataParallelTopology(num_pp=p, num_mp=t, num_dp=d)
    for rank in range(t * d * p):
        c = topo.get_coord(rank)
        assert rank == c.model + t * (c.data + d * c.pipe)
