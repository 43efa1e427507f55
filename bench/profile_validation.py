"""Profile the output validation stage (``validate_export``) on an export's folder: CPU seconds
per format component (cProfile or in total), so a change to it can be judged on a busy machine.
Ends with the sha256 of the report: equal before and after a change means the same findings.

By default the folder is checked as the export checks its own files (``columns_checked``, no
PRD feature walked); ``--full`` checks it as an archive from elsewhere. The folder is only read.

    python bench/profile_validation.py --folder /tmp/staged/out --repeat 3
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mistudio_export.validation import layout
from mistudio_export.validation.report import ValidationReport
from mistudio_export.validation.validator import Checked, _check_component, validate_export


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, required=True, help="an export's output folder")
    parser.add_argument("--full", action="store_true", help="check as an archive from elsewhere")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (the profile: one)")
    parser.add_argument("--profile", choices=("python", "none"), default="none")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)

    checked = Checked(columns=not args.full, walk_features=frozenset())
    components = layout.discover(args.folder)
    if args.profile == "python":
        profile = cProfile.Profile(time.process_time)  # CPU seconds: the machine is shared
        profile.runcall(_validate, args.folder, checked)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        return
    for run in range(args.repeat):
        per_component = []
        for component in components:
            cpu = time.process_time()
            _check_component(args.folder, False, component, checked)
            per_component.append(f"{component.kind} {time.process_time() - cpu:.2f}")
        cpu = time.process_time()
        report = _validate(args.folder, checked)
        cpu = time.process_time() - cpu
        digest = hashlib.sha256(report.to_json()).hexdigest()
        print(f"run {run}: {cpu:.2f} CPU-s in all ({', '.join(per_component)}); "
              f"{report.files_checked} files, {len(report.problems)} problems; "
              f"sha256 of the report {digest}")  # fmt: skip


def _validate(folder: Path, checked: Checked) -> ValidationReport:
    return validate_export(
        folder, columns_checked=checked.columns, walk_features=checked.walk_features
    )


if __name__ == "__main__":
    main()
