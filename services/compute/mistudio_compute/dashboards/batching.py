"""Row batching shared by both passes: cancellation, progress and batch halving on OOM."""

from __future__ import annotations

from collections.abc import Callable

import torch
from mistudio_common.errors import Cancelled, ResourceExhausted

from mistudio_compute.dashboards.inputs import CancelCheck, ProgressCallback, Stage


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


def check_cancelled(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("dashboard computation cancelled", fix="start the job again to resume")


def for_each_batch(
    start: int,
    stop: int,
    batch_size: int,
    step: Callable[[int, int], None],
    *,
    stage: Stage,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    after: Callable[[int, int], None] | None = None,
    items_per_index: int = 1,
    origin: int | None = None,
) -> int:
    """Call ``step(i, j)`` on consecutive slices of [start, stop), then ``after(j, batch_size)``.

    An out-of-memory error inside ``step`` halves the batch and retries the same slice (``step``
    must leave no trace when it fails). Progress counts from ``origin`` (default ``start``) so
    a resumed pass reports the whole range, starting with where it resumes. Returns the final
    batch size.
    """
    base = start if origin is None else origin
    if progress is not None:  # the stage starts now, not when its first batch is done
        progress(stage, (start - base) * items_per_index, (stop - base) * items_per_index, "")
    i = start
    while i < stop:
        check_cancelled(cancel)
        j = min(i + batch_size, stop)
        try:
            step(i, j)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if batch_size == 1:
                raise ResourceExhausted(
                    f"out of memory in {stage.value} even with one row per batch",
                    fix="use a smaller SAE feature subset, a shorter context or a larger device",
                ) from error
            batch_size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if progress is not None:
                done, total = (i - base) * items_per_index, (stop - base) * items_per_index
                progress(stage, done, total, f"out of memory: batch size halved to {batch_size}")
            continue
        i = j
        if after is not None:
            after(j, batch_size)
        if progress is not None:
            done, total = (j - base) * items_per_index, (stop - base) * items_per_index
            progress(stage, done, total, "")
    return batch_size
