"""A node whose contract needs a newer runtime than this one (exit code 3)."""
