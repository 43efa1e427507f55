"""The one command line of every service: flags override settings read from the environment.

Each service names its own extra flags; host, port and log level are common to all three. A flag
left out keeps whatever the environment (or the settings' default) says, so a container can be
configured by variables alone and a developer by flags alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic_settings import BaseSettings

from mistudio_common.errors import InvalidArgument, MistudioError
from mistudio_common.logging_setup import configure_logging
from mistudio_common.server import PortInUse, RunningServer, serve_until_signal
from mistudio_common.settings_env import check_environment

S = TypeVar("S", bound=BaseSettings)


@dataclass(frozen=True, slots=True)
class Flag:
    option: str
    """The command-line option, e.g. ``--store``."""
    setting: str
    """The settings field it overrides, e.g. ``store_address``."""
    help: str
    type: Callable[[str], Any] = str


COMMON_FLAGS = (
    Flag("--host", "host", "interface to listen on"),
    Flag("--port", "port", "gRPC port; 0 picks a free one", int),
    Flag("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR"),
)


def parse_settings(
    settings_type: type[S],
    *,
    prog: str,
    description: str | None,
    flags: Sequence[Flag] = (),
    argv: Sequence[str] | None = None,
) -> S:
    """Settings from the environment, with the given flags (and COMMON_FLAGS) overriding them."""
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Every setting can also come from a {prefix}* environment variable.",
    )
    for flag in (*COMMON_FLAGS, *flags):
        info = settings_type.model_fields[flag.setting]
        shown = "derived" if info.default_factory is not None else info.default or "none"
        parser.add_argument(
            flag.option,
            dest=flag.setting,
            type=flag.type,
            help=f"{flag.help} (env {prefix}{flag.setting.upper()}; default {shown})",
        )
    overrides = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        check_environment(settings_type)
    except InvalidArgument as error:
        parser.error(str(error))
    return settings_type(**overrides)


def run_service(
    name: str, settings: S, build: Callable[[S], RunningServer], **log_fields: Any
) -> None:
    """Starts the service ``build`` makes from ``settings`` and serves until SIGTERM/SIGINT."""
    configure_logging(name, getattr(settings, "log_level", "INFO"))
    try:
        running = build(settings)
    except PortInUse as error:
        logging.getLogger(f"mistudio_{name}").error(str(error))
        raise SystemExit(1) from error
    except MistudioError as error:  # a bad setting: one line naming it, not a traceback
        print(f"error{_setting_named(settings, error.field)}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger(f"mistudio_{name}").info(
        f"{name} service ready", extra={"port": running.port, **log_fields}
    )
    serve_until_signal(running)


def _setting_named(settings: BaseSettings, field: str) -> str:
    if field not in type(settings).model_fields:
        return f" [{field}]" if field else ""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return f" [{field}: env {prefix}{field.upper()}]"
