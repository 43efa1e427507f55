"""miStudio Export: the export service."""
