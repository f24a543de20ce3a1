"""Fitting an *implicit* CPU model the way every factor model here needs it.

implicit parallelises over rows itself; letting BLAS start its own threads inside each
row's solve oversubscribes the cores (2 here) and is several times slower, so BLAS is
pinned to one thread for the fit. The factors are copied out as contiguous float32, the
layout scoring and the published keyspace use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits


def fit_factors(model: Any, user_items: sp.csr_matrix,
                show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``model`` (an implicit ``MatrixFactorizationBase``) on ``user_items``; return
    ``(user_factors, item_factors)``."""
    with threadpool_limits(1, "blas"):
        model.fit(user_items, show_progress=show_progress)
    return (np.ascontiguousarray(model.user_factors, dtype=np.float32),
            np.ascontiguousarray(model.item_factors, dtype=np.float32))
