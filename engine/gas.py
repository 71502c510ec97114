"""Goal Attainment Scaling T-score (Kiresuk & Sherman 1968)."""

from __future__ import annotations

import math
from collections.abc import Sequence

RHO = 0.3  # the conventional inter-goal correlation


def gas_t_score(levels: Sequence[float], weights: Sequence[float], rho: float = RHO) -> float | None:
    """T = 50 + 10·Σwx / √((1−ρ)Σw² + ρ(Σw)²); None when it is undefined.

    Levels run from −2 to +2 (0 = expected outcome). T = 50 means the goals
    were attained as expected; each 10 points is one standard deviation.
    """
    if not levels or len(levels) != len(weights):
        return None
    sum_wx = sum(w * x for w, x in zip(weights, levels, strict=True))
    sum_w2 = sum(w * w for w in weights)
    sum_w = sum(weights)
    denominator = math.sqrt((1 - rho) * sum_w2 + rho * sum_w * sum_w)
    if denominator == 0:
        return None
    return 50 + 10 * sum_wx / denominator
