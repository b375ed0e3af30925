"""Recursive relabel, the fallback when a volume cannot be mounted with context=: the Python face decides, the C
walker (_walker.c) walks and labels."""
