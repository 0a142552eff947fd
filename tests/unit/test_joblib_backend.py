"""The joblib backend's decisions that need no worker: ``n_jobs=0``, automatic batching."""

from __future__ import annotations

import pytest
from joblib import Parallel, delayed

import distrib.joblib
from distrib.main import _current


def test_n_jobs_zero_is_a_value_error_as_on_every_backend_and_starts_no_session() -> None:
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        Parallel(n_jobs=0, backend="distrib")(delayed(abs)(-1) for _ in range(2))
    with pytest.raises(ValueError, match="n_jobs == 0"):
        distrib.joblib.DistribBackend().effective_n_jobs(0)
    assert _current._session is None


class _Parallel:
    verbose = 0


def test_tiny_batches_grow_as_loky_s_do() -> None:
    backend = distrib.joblib.DistribBackend()
    backend.parallel = _Parallel()
    sizes = []
    for _ in range(5):  # (each batch of the current size took 1 ms: far under joblib's 0.2 s)
        size = backend.compute_batch_size()
        backend.batch_completed(size, 0.001)
        sizes.append(size)
    assert sizes == [1, 2, 4, 8, 16]
    backend.terminate()
    assert backend.compute_batch_size() == 1  # (a later Parallel starts again)
