"""The `mistudio-export` command line, `make demo` and the in-process stack.

The command is a gRPC client of the export, store and compute services; without an
`--export-address` it starts all three in its own process (local_stack), which is why this is
the one package that imports every service's server builder. The services import none of it.
"""
