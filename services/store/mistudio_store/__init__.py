"""miStudio Export: the store service."""
