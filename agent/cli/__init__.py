"""Command line: one module per subcommand (`*_cmd.py`), each registering its own arguments."""
