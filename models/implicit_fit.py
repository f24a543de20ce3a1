"""Fitting an *implicit* CPU model the way every factor model here needs it.

implicit parallelises over rows itself; letting BLAS start its own threads inside each
row's solve oversubscribes the cores (2 here) and is several times slower, so BLAS is
pinned to one thread for the fit. The factors are copied out as contiguous float32, the
layout scoring and the published keyspace use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits


def fit_factors(make_model: Callable[[], Any], user_items: sp.csr_matrix,
                show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Build an implicit model with ``make_model`` and fit it on ``user_items``; return
    ``(user_factors, item_factors)``. The model is built inside the BLAS limit too: implicit
    checks the BLAS thread count in its constructor (and warns when it is above one)."""
    with threadpool_limits(1, "blas"):
        model = make_model()
        model.fit(user_items, show_progress=show_progress)
    return (np.ascontiguousarray(model.user_factors, dtype=np.float32),
            np.ascontiguousarray(model.item_factors, dtype=np.float32))
