"""Peak memory of validating an export folder, as the export's VALIDATING_OUTPUT stage does it.

`python bench/validation_memory.py FOLDER [--processes 2]`: ``validate_export(FOLDER,
columns_checked=True)`` with the process pool, sampling every 0.2 s this process's resident set
plus the private memory of the pool's processes (as ``ours_job.StageRss``'s tree peaks), and
each pool process's peak. Run it on a tiny folder too: the difference over the feature count is
the bytes a feature costs. ``--trace KIND``: that format checked in this process under
tracemalloc instead, with the lines whose allocations grew most.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import threading
import time
import tracemalloc
from pathlib import Path

from mistudio_export.validation import layout, validate_export, validator
from mistudio_export.worker_pool import WorkerPool


def _private_mb(pid: str) -> tuple[float, float]:
    """(resident, private) MB of ``pid``."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:]}
    return fields["Rss"] / 1024, (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _children() -> list[str]:
    return [
        pid
        for task in Path(f"/proc/{os.getpid()}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]


class Sampler:
    def __init__(self) -> None:
        self.tree = self.own = _private_mb(str(os.getpid()))[0]
        self.children: dict[str, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.2):
            own, total = _private_mb(str(os.getpid()))[0], 0.0
            for pid in _children():
                try:
                    private = _private_mb(pid)[1]
                except (FileNotFoundError, ProcessLookupError):
                    continue
                self.children[pid] = max(self.children.get(pid, 0.0), private)
                total += private
            self.own, self.tree = max(self.own, own), max(self.tree, own + total)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _trace(root: Path, kind: str) -> None:
    for component in [c for c in layout.discover(root) if c.kind == kind]:
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        session = validator._check_component(
            root, False, component, validator.Checked(True, frozenset())
        )
        _, peak = tracemalloc.get_traced_memory()
        grown = tracemalloc.take_snapshot().compare_to(before, "lineno")
        tracemalloc.stop()
        print(f"{kind} {component.path}: traced peak {peak / 2**20:.1f} MB, "
              f"{len(session.problems)} problems")  # fmt: skip
        for line in grown[:8]:
            print("  ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--trace", default="", help="a format kind, e.g. prd")
    args = parser.parse_args()
    if args.trace:
        _trace(args.folder, args.trace)
        return
    validator.PARALLEL_MIN_BYTES = 0  # a tiny folder too is checked by the pool
    start_mb = _private_mb(str(os.getpid()))[0]
    sampler, started = Sampler(), time.perf_counter()
    pool = WorkerPool(args.processes)
    report = validate_export(args.folder, pool=pool, columns_checked=True)
    sampler.stop()
    pool.shutdown()
    while multiprocessing.active_children():  # reaped: their CPU is in RUSAGE_CHILDREN
        time.sleep(0.05)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    features = args.folder / "features"
    n = sum(1 for _ in os.scandir(features)) if features.is_dir() else 0
    print(f"{n} feature files, {report.files_checked} files checked, {len(report.problems)} "
          f"problems, ok={report.ok}")  # fmt: skip
    print(f"this process {start_mb:.0f} MB at the start, peak {sampler.own:.0f} MB; with the "
          f"pool's private memory peak {sampler.tree:.0f} MB")  # fmt: skip
    print("pool processes' peak private MB:", sorted(round(v) for v in sampler.children.values()))
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(f"wall {time.perf_counter() - started:.1f} s, CPU {cpu:.1f} s (with the pool's)")


if __name__ == "__main__":
    main()
