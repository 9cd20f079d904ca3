"""Overlap metrics (one definition used by the CLI, the benchmark and the tests)."""
from __future__ import annotations

import numpy as np


def dice(a, b) -> float:
    """Dice of two binary arrays (nonzero = inside). Two empty masks agree perfectly (1.0)."""
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.count_nonzero(a & b)) / s
