"""Shows an export's progress stream: live per-stage bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common import stages
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

STATE_LABELS = {
    ppb.JOB_STATE_QUEUED: "queued",
    ppb.JOB_STATE_RUNNING: "running",
    ppb.JOB_STATE_PAUSED: "paused",
    ppb.JOB_STATE_SUCCEEDED: "succeeded",
    ppb.JOB_STATE_FAILED: "failed",
    ppb.JOB_STATE_CANCELLED: "cancelled",
}


def stage_label(stage: int) -> str:
    return stages.label(stage)


def state_label(state: int) -> str:
    return STATE_LABELS.get(state, "unknown")  # type: ignore[call-overload]


def format_seconds(seconds: float) -> str:
    if seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def follow(
    stream: Iterable[epb.ExportProgress], out: TextIO = sys.stderr
) -> epb.ExportProgress | None:
    """Consumes a progress stream while showing it; returns the last message."""
    view = _LiveView(out) if out.isatty() else _PlainView(out)
    last = None
    with view:
        for message in stream:
            view.show(message.progress)
            last = message
    return last


class _PlainView:
    """One line per stage change (and at most one every few seconds) for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last_stage = -1
        self.last_print = 0.0

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *_: object) -> None:
        self.out.flush()

    def show(self, progress: ppb.Progress) -> None:
        now = time.monotonic()
        if progress.stage == self.last_stage and now - self.last_print < 5.0:
            return
        self.last_stage, self.last_print = progress.stage, now
        total = f"/{progress.items_total}" if progress.items_total else ""
        print(
            f"[{progress.fraction * 100:5.1f}%] {stage_label(progress.stage)}: "
            f"{progress.items_done}{total} {progress.unit} "
            f"(elapsed {format_seconds(progress.elapsed_seconds)}, "
            f"remaining ~{format_seconds(progress.eta_seconds)}) {progress.message}".rstrip(),
            file=self.out,
        )


class _LiveView:
    """Rich bars: overall, then one per stage with its state, counts, elapsed and ETA."""

    def __init__(self, out: TextIO) -> None:
        self.bars = Progress(
            TextColumn("{task.description:<30}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=Console(file=out),
        )
        self.overall: TaskID | None = None
        self.tasks: dict[int, TaskID] = {}

    def __enter__(self) -> _LiveView:
        self.bars.start()
        self.overall = self.bars.add_task("Overall", total=1.0, counts="", eta="")
        return self

    def __exit__(self, *_: object) -> None:
        self.bars.stop()

    def show(self, progress: ppb.Progress) -> None:
        assert self.overall is not None
        self.bars.update(
            self.overall,
            completed=progress.fraction,
            eta=f"~{format_seconds(progress.eta_seconds)} left",
        )
        for stage in progress.stages:
            if stage.stage not in self.tasks:
                self.tasks[stage.stage] = self.bars.add_task(
                    stage_label(stage.stage), total=1.0, counts="", eta=""
                )
            done = stage.state == ppb.JOB_STATE_SUCCEEDED
            fraction = (
                1.0 if done else stage.items_done / stage.items_total if stage.items_total else 0.0
            )
            counts = (
                f"{stage.items_done:,}/{stage.items_total:,} {stage.unit}"
                if stage.items_total
                else ""
            )
            self.bars.update(
                self.tasks[stage.stage],
                completed=fraction,
                counts=counts,
                eta="done" if done else state_label(stage.state),
            )


def summarize_stages(progress: ppb.Progress) -> Iterator[str]:
    """The PRD's stage table as lines: status mark, label, time."""
    marks = {ppb.JOB_STATE_SUCCEEDED: "✓", ppb.JOB_STATE_RUNNING: "●", ppb.JOB_STATE_FAILED: "✗"}
    for stage in progress.stages:
        mark = marks.get(stage.state, "○")  # type: ignore[call-overload]
        yield f"  {mark} {stage_label(stage.stage):<30} {format_seconds(stage.elapsed_seconds)}"
