"""Code shared by the three services: errors, server bootstrap, progress, dashboard model."""
