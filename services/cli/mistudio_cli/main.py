"""`mistudio-export`: export SAEs to Neuronpedia and SAELens from a terminal or a script.

Errors print as one line with the fix (a traceback only with --debug); Ctrl-C cancels a
running export cleanly and exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from mistudio_common.errors import MistudioError
from mistudio_common.gc_pause import skip_final_collection
from mistudio_common.grpc_errors import error_from_rpc

from mistudio_cli import commands, upload_command, upload_input_command
from mistudio_cli.connection import add_connection_options
from mistudio_cli.options import add_export_options, add_token_options, flag_for
from mistudio_cli.preview_command import add_preview_command

EPILOG_RUN = """examples:
  mistudio-export run ./my-sae --model gpt2-small --text corpus.txt
  mistudio-export run ./my-sae --tokens tokens.npy --features 0:1000 --examples 50 --logit-k 20
  mistudio-export run my-registered-sae --format saelens --output my-sae.zip
  mistudio-export run ./my-sae --tokens tokens.npy --delta-from 3f2c… --merge
  mistudio-export run my-registered-sae --labeled-only --export-address host:50053
"""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    add_connection_options(parser)


def _add_sae_options(parser: argparse.ArgumentParser) -> None:
    """What `run` and `estimate` share: the SAE, whose it is, how to register it, and every
    export option."""
    parser.add_argument("sae", metavar="SAE", help="SAELens folder, safetensors file, or SAE id")
    parser.add_argument(
        "--owner",
        default="",
        help="whose SAE: a folder is registered as theirs and an id looked up among theirs, and "
        "they own the job (admins and services; default: yours)",
    )
    parser.add_argument(
        "--model", default="", help="TransformerLens name or llama2c:<bin>?tokenizer=<file>"
    )
    parser.add_argument("--hook", default="", help="hook point, e.g. blocks.2.hook_resid_post")
    parser.add_argument("--sae-id", default="", help="id to register a local folder under")
    parser.add_argument(
        "--explanations", default="", metavar="JSON", help="explanations to add or update"
    )
    parser.add_argument(
        "--labels", default="", metavar="FILE", help="feature labels and categories (CSV or JSON)"
    )
    add_export_options(parser)


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Appends '(default: …)' to every option that takes a value and does not state it yet."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_parser in action.choices.values():
                show_defaults(sub_parser)
            continue
        if not action.option_strings or action.nargs == 0 or action.default is None:
            continue  # positionals, switches (--flag is off unless given), --help
        if "default" in (action.help or ""):
            continue
        shown = action.default if action.default not in ("", []) else "none"
        note = f"(default: {str(shown).replace('%', '%%')})"
        action.help = f"{action.help} {note}" if action.help else note


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mistudio-export",
        description="Turn a trained SAE into Neuronpedia dashboards, a SAELens folder and a "
        "validated archive.",
        epilog="Run `mistudio-export COMMAND --help` for each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace], int], epilog: str = ""
    ) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub_parser.set_defaults(handler=handler)
        _add_common(sub_parser)
        return sub_parser

    run = command(
        "run", "export a local SAE folder or a registered SAE", commands.cmd_run, EPILOG_RUN
    )
    run.add_argument("--request-id", default="", help="idempotency key (default: random)")
    run.add_argument("--output", default="", metavar="ZIP", help="also download the archive here")
    _add_sae_options(run)

    estimate = command(
        "estimate",
        "what an export would compute, how long it would take and how large it would be "
        "(no job is created)",
        commands.cmd_estimate,
        "example:\n  mistudio-export estimate ./my-sae --tokens tokens.npy --features 0:1000",
    )
    _add_sae_options(estimate)

    validate = command(
        "validate",
        "validate an export archive or folder; exit 1 when it has errors",
        commands.cmd_validate,
        "examples:\n  mistudio-export validate export.zip\n"
        "  mistudio-export validate ./export-folder --auto-fix --json report.json",
    )
    validate.add_argument("path", help="a .zip archive or an export folder")
    validate.add_argument("--auto-fix", action="store_true", help="repair common problems")
    validate.add_argument("--json", default="", metavar="FILE", help="write the full report")

    presets = command(
        "presets",
        "list the presets of dashboard options, with estimates for an SAE",
        commands.cmd_presets,
        "examples:\n  mistudio-export presets\n"
        "  mistudio-export presets --sae-id my-sae --tokens tokens.npy   # with time and size",
    )
    presets.add_argument("--sae-id", default="", help="a registered SAE to estimate for")
    add_token_options(presets)

    status = command("status", "show one export job", commands.cmd_status)
    status.add_argument("job_id")

    listing = command("list", "list export jobs, newest first", commands.cmd_list)
    listing.add_argument("--sae-id", default="", help="only this SAE's exports")
    listing.add_argument("--owner", default="", help="only this owner's exports")

    for name, help_text, handler in (
        ("cancel", "cancel an export job", commands.cmd_cancel),
        ("pause", "pause a running export at its next checkpoint", commands.cmd_pause),
        ("resume", "resume a paused export from its checkpoint", commands.cmd_resume),
    ):
        command(name, help_text, handler).add_argument("job_id")

    labels = command(
        "labels",
        "set feature labels and categories of a registered SAE from a CSV or JSON file",
        commands.cmd_labels,
        "examples:\n  mistudio-export labels my-sae labels.csv   # feature_index,label,category"
        '\n  mistudio-export labels my-sae labels.json  # [{"feature_index": 3, "label": "…"}]',
    )
    labels.add_argument("sae_id", metavar="SAE_ID")
    labels.add_argument("file", metavar="FILE", help="CSV or JSON labels file")

    upload = command(
        "upload",
        "send an export's upload payloads to Neuronpedia's upload API (lists them without --send)",
        upload_command.cmd_upload,
        upload_command.EPILOG,
    )
    upload_command.add_upload_arguments(upload)

    upload_input = command(
        "upload-input",
        "put a local SAE folder or token file into a remote export service's object store; "
        "prints the s3:// URI to export from",
        upload_input_command.cmd_upload_input,
        upload_input_command.EPILOG,
    )
    upload_input_command.add_upload_input_arguments(upload_input)

    delete = command(
        "delete",
        "delete an export job and its archive (a job still running is cancelled first)",
        commands.cmd_delete,
    )
    delete.add_argument("job_id")

    download = command(
        "download",
        "download a finished export (or print a presigned URL)",
        commands.cmd_download,
        "examples:\n  mistudio-export download 3f2c… --output sae.zip\n"
        "  mistudio-export download 3f2c… --url --expiry 86400",
    )
    download.add_argument("job_id")
    download.add_argument("--output", default="", metavar="ZIP")
    download.add_argument("--url", action="store_true", help="print a presigned URL instead")
    download.add_argument("--expiry", type=int, default=3600, help="URL lifetime in seconds")

    add_preview_command(sub)

    serve = command(
        "serve",
        "start store (a child process), compute and export on embedded defaults",
        cmd_serve,
        "example:\n  mistudio-export serve --data-dir ./data   # then point the backend at :50053",
    )
    serve.add_argument("--store-port", type=int, default=50051)
    serve.add_argument("--compute-port", type=int, default=50052)
    serve.add_argument("--export-port", type=int, default=50053)
    serve.add_argument("--device", default="auto")
    show_defaults(parser)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from mistudio_cli.local_stack import start_local_stack

    stack = start_local_stack(
        Path(args.data_dir),
        store_port=args.store_port,
        compute_port=args.compute_port,
        export_port=args.export_port,
        device=args.device,
    )
    for name, address in stack.addresses.items():
        print(f"{name:<8} {address}")
    print(f"data in {stack.data_dir}; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping…", file=sys.stderr)
    finally:
        stack.stop()
    return 0


def in_flags(text: str, field: str) -> str:
    """``text`` with the proto field an error names (whole or its last part) as the CLI flag."""
    flag = flag_for(field) if field else ""
    if not flag.startswith("--"):
        return text
    for name in (field, field.rsplit(".", 1)[-1]):
        text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", flag, text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MistudioError, grpc.RpcError) as raw:
        error = error_from_rpc(raw) if isinstance(raw, grpc.RpcError) else raw
        if args.debug:
            traceback.print_exc()
        flag = flag_for(error.field) if error.field else ""
        where = f" [{flag}]" if flag else ""
        print(f"error{where}: {in_flags(error.message, error.field)}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {in_flags(error.fix, error.field)}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        print(f"error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        return 1


def run() -> None:
    """The ``mistudio-export`` command: :func:`main`, and an exit without Python's last garbage
    collection (after a local export it walks every object torch and transformer_lens made)."""
    skip_final_collection()
    sys.exit(main())


if __name__ == "__main__":
    run()
