"""Environment variables under a service's prefix that name none of its settings are refused.

pydantic-settings ignores them, so a misspelt or renamed variable (``..._CHECKPOINT_EVERY_BATCHES``
after it became ``..._EVERY_SECONDS``) used to leave the setting at its default without a word.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from mistudio_common.errors import InvalidArgument

CLIENT_ADDRESS_VARIABLES = {
    "store": "MISTUDIO_STORE_ADDRESS",
    "compute": "MISTUDIO_COMPUTE_ADDRESS",
    "export": "MISTUDIO_EXPORT_ADDRESS",
}
"""The command-line client's service addresses (``mistudio_cli.connection``): they share the
services' prefixes without being settings of theirs."""


def check_environment(
    settings_type: type[BaseSettings], environ: Mapping[str, str] = os.environ
) -> None:
    """Raises InvalidArgument naming the first variable under ``settings_type``'s env prefix
    that none of its settings reads, with the closest setting's variable as the fix."""
    prefix = str(settings_type.model_config.get("env_prefix", "")).upper()
    if not prefix:
        return
    read = sorted(
        {prefix + name.upper() for name in settings_type.model_fields}
        | {alias.upper() for info in settings_type.model_fields.values()
           if isinstance(info.validation_alias, AliasChoices)
           for alias in info.validation_alias.choices
           if isinstance(alias, str) and alias.upper().startswith(prefix)}
    )  # fmt: skip
    known = {*read, *CLIENT_ADDRESS_VARIABLES.values()}
    for name in sorted(environ):
        if name.upper().startswith(prefix) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), read, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise InvalidArgument(
                f"environment variable {name} names no setting of {settings_type.__name__}; "
                "it would be ignored",
                field=name,
                fix=f"{hint}unset it or rename it to one of {prefix}* settings ({', '.join(read)})",
            )
