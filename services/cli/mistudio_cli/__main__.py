"""`python -m mistudio_cli` is the same as `mistudio-export`."""

from mistudio_cli.main import run

run()
