"""`mistudio-export preview`: write (and optionally serve) the static viewer of an export."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mistudio_common.errors import InvalidArgument
from mistudio_export.preview import PreviewSite, prd_root, preview_server, write_preview

from mistudio_cli.commands import download
from mistudio_cli.connection import add_connection_options, connect

EPILOG = """examples:
  mistudio-export preview export.zip                 # writes ./export-preview/index.html
  mistudio-export preview ./export-folder --output /tmp/viewer --serve --port 8765
  mistudio-export preview 3f2c…                      # a finished job: downloads its archive first
"""


def add_preview_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "preview",
        help="write a static dashboard viewer for an export (opens from file://)",
        description="Write a self-contained viewer of an export's feature dashboards: a feature "
        "list with search and sorting, and per feature its explanations, statistics, "
        "histograms, logits, top tokens and examples. No network is used at view time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=cmd_preview)
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    add_connection_options(parser)
    parser.add_argument("source", metavar="ARCHIVE|JOB", help="export .zip, folder, or job id")
    parser.add_argument(
        "--output", default="", metavar="DIR", help="where to write it (default: ./NAME-preview)"
    )
    parser.add_argument("--serve", action="store_true", help="also serve it on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="with --serve (default: a free port)")


def _looks_like_path(source: str) -> bool:
    return "/" in source or "\\" in source or source.endswith(".zip") or source in (".", "..")


def build_preview(source: Path, output: Path) -> PreviewSite:
    with prd_root(source) as root:
        return write_preview(root, output)


def cmd_preview(args: argparse.Namespace) -> int:
    source = Path(args.source)
    name = source.stem if source.suffix == ".zip" else source.resolve().name
    output = Path(args.output or f"{name or 'export'}-preview").resolve()
    if args.port and not args.serve:
        raise InvalidArgument("--port needs --serve", field="--port", fix="add --serve")
    if source.exists():
        site = _with_output_flag(source, output)
    elif _looks_like_path(args.source):
        raise InvalidArgument(
            f"{source} does not exist",
            field="ARCHIVE",
            fix="give an export .zip, an export folder, or a finished export's job id",
        )
    else:
        with tempfile.TemporaryDirectory(prefix="mistudio-preview-") as scratch:
            archive = Path(scratch) / "export.zip"
            with connect(args) as services:
                download(services, args.source, archive)
            site = _with_output_flag(archive, output)
    print(f"preview of {site.n_features} features: {site.index_html.as_uri()}")
    if args.serve:
        _serve(site, args.port)
    return 0


def _with_output_flag(source: Path, output: Path) -> PreviewSite:
    """Builds the site; an error about the output folder names the CLI flag."""
    try:
        return build_preview(source, output)
    except InvalidArgument as error:
        if error.field == "output":
            raise InvalidArgument(error.message, field="--output", fix=error.fix) from None
        raise


def _serve(site: PreviewSite, port: int) -> None:
    server = preview_server(site.root, port)
    host, bound = server.server_address[:2]
    print(f"serving on http://{host!s}:{bound}/index.html; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
