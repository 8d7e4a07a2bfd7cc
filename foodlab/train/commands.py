def add_commands(sub):
    """Placeholder until this area lands."""
