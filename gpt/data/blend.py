"""Which component of a weighted blend each global sample comes from.

Megatron's rule: sample n goes to the component with the largest deficit w_k*(n+1) - count_k. We run
it over one period P, the smallest number of samples in which every weight is a whole count (0.7/0.3
-> P=10), in exact integer arithmetic, and repeat the pattern. So a component's share of any window
of samples is within about one sample of its weight, and every global batch whose size is a
multiple of P holds exactly weight*size samples of each component. Sample n -> (component, index in
component) is O(1) for any n, which keeps the loader stateless.
"""

from fractions import Fraction
from math import lcm
from typing import List, Sequence, Tuple

import numpy as np

MAX_PERIOD = 1 << 16
"""Longer periods (weights like 0.123457) are rounded to shares of 65536: proportions exact to ~1e-5."""


def period_counts(weights: Sequence[float]) -> List[int]:
    """Samples of each component in one period (their sum is the period)."""
    fractions = [Fraction(w).limit_denominator(10_000) for w in weights]
    total = sum(fractions)
    shares = [f / total for f in fractions]
    period = lcm(*(s.denominator for s in shares))
    if period <= MAX_PERIOD:
        return [int(s * period) for s in shares]
    # Largest remainder rounding to MAX_PERIOD samples; every component keeps at least one.
    exact = [float(s) * MAX_PERIOD for s in shares]
    counts = [max(1, int(x)) for x in exact]
    for k in sorted(range(len(exact)), key=lambda k: counts[k] - exact[k])[:MAX_PERIOD - sum(counts)]:
        counts[k] += 1
    return counts


class BlendSchedule:
    def __init__(self, weights: Sequence[float]):
        self.counts = np.array(period_counts(weights), dtype=np.int64)   # [K]
        self.period = int(self.counts.sum())
        component = np.empty(self.period, dtype=np.int64)                 # [P]
        rank = np.empty(self.period, dtype=np.int64)                      # [P] index within its component
        taken = [0] * len(self.counts)
        counts = self.counts.tolist()
        for n in range(self.period):
            # deficit_k * P = counts_k * (n+1) - taken_k * P, in integers so ties are exact
            k = max(range(len(counts)), key=lambda k: counts[k] * (n + 1) - taken[k] * self.period)
            component[n], rank[n] = k, taken[k]
            taken[k] += 1
        self.component, self.rank = component, rank

    def locate(self, index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(component [n], sample index within that component [n]) of global samples `index` [n]."""
        q, r = np.divmod(np.asarray(index, dtype=np.int64), self.period)
        component = self.component[r]
        return component, q * self.counts[component] + self.rank[r]
