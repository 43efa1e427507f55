"""Command line: ``python -m mistudio_export.validation FOLDER [--fix] [--json]``.

Exit status 0 when no errors remain, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mistudio_export.validation.validator import validate_export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate a miStudio export folder.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--fix", action="store_true", help="repair common problems in place")
    parser.add_argument("--json", action="store_true", help="print the machine-readable report")
    args = parser.parse_args(argv)
    report = validate_export(args.folder, fix=args.fix)
    if args.json:
        sys.stdout.buffer.write(report.to_json() + b"\n")
    else:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
