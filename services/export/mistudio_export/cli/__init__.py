"""The `mistudio-export` command line: a gRPC client of the export, store and compute services."""
