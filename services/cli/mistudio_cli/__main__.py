"""`python -m mistudio_cli` is the same as `mistudio-export`, whose entry point is here.

The entry point imports the command line only when it runs: the export service's worker
processes are spawned, and a spawned process re-runs the script that started its parent (the
`mistudio-export` script, which imports this module) before its first task; importing
``mistudio_cli.main`` there cost each worker 0.23 CPU-s of modules it never uses.
"""


def run() -> None:
    """The ``mistudio-export`` command (see :func:`mistudio_cli.main.run`)."""
    from mistudio_cli.main import run as run_command

    run_command()


if __name__ == "__main__":
    run()
