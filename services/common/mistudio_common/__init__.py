"""Code shared by the compute, store and export services: errors, server bootstrap, progress, the dashboard model."""
