"""The `mistudio-export` command line, `make demo` and the local stack.

The command is a gRPC client of the export, store and compute services; without an
`--export-address` it starts all three itself (local_stack; the store in a child process),
which is why this is the one package that imports every service's server builder. The services
import none of it.
"""
