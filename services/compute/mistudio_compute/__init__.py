"""miStudio Export: the compute service."""
