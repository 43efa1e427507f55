"""Writes a job's finalised dashboards to the store while the next chunk is being computed.

A single writer thread drains a short queue, so store round trips overlap with tensor work and
at most ``max_pending`` batches wait in memory. A store that is briefly out of reach is waited
out (writes are upserts, so a retried batch is harmless); a write that still fails is raised in
the job thread at its next ``add`` or at ``close``, which also waits until everything is written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.retry import Patience, call_with_patience

from mistudio_compute.store_client import FeatureStats, StoreClient

_STOP: list[dpb.FeatureDashboard] = []


class DashboardSink:
    """Batches dashboards for one (SAE, params) and caches them with their feature stats."""

    def __init__(
        self,
        store: StoreClient,
        sae_id: str,
        params: DashboardParams,
        batch_size: int = 64,
        max_pending: int = 2,
        patience: Patience | None = None,
        owner: str = "",
    ) -> None:
        self._store, self._sae_id, self._params = store, sae_id, params
        self._owner = owner
        """The SAE's owner (ids are unique per owner); empty: the only SAE with this id."""
        self._patience = patience or Patience()
        self._aborted = threading.Event()
        self._batch_size = batch_size
        self._pending: list[dpb.FeatureDashboard] = []
        self._queue: queue.Queue[list[dpb.FeatureDashboard]] = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self.written = 0
        self._writer = threading.Thread(target=self._drain, name="dashboard-sink", daemon=True)
        if sae_id:  # an SAE given as files has no store record to cache under
            self._writer.start()

    def add(self, dashboards: Sequence[dpb.FeatureDashboard]) -> None:
        self._raise_if_failed()
        if not self._sae_id:
            return
        self._pending.extend(dashboards)
        if len(self._pending) >= self._batch_size:
            self._queue.put(self._pending)
            self._pending = []

    def close(self) -> None:
        """Writes what is left and waits for the writer; raises the first failed write."""
        if self._writer.is_alive():
            if self._pending:
                self._queue.put(self._pending)
                self._pending = []
            self._queue.put(_STOP)
            self._writer.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stops the writer without writing what is still pending (the job did not finish)."""
        self._pending = []
        self._aborted.set()  # cuts short a wait for the store
        if self._writer.is_alive():
            self._error = self._error or _Aborted()
            self._queue.put(_STOP)
            self._writer.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None and not isinstance(self._error, _Aborted):
            raise self._error

    def _drain(self) -> None:
        while (batch := self._queue.get()) is not _STOP:
            if self._error is not None:
                continue  # keep draining so that producers never block on a full queue
            try:
                self.written += call_with_patience(
                    lambda: self._write(batch), self._patience, self._aborted.wait
                )
            except Exception as error:
                self._error = error

    def _write(self, batch: list[dpb.FeatureDashboard]) -> int:
        written = self._store.put_dashboards(self._sae_id, self._params, batch, self._owner)
        self._store.upsert_features(self._sae_id, [_stats(d) for d in batch], self._owner)
        return written


class _Aborted(Exception):
    pass


def _stats(dashboard: dpb.FeatureDashboard) -> FeatureStats:
    s = dashboard.statistics
    return FeatureStats(dashboard.feature_index, s.activation_frequency, s.max_activation)
