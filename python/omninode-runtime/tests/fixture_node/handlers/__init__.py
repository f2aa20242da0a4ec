"""Handler modules, one per operation."""
