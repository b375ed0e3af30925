"""Recursive relabel, the fallback when a volume cannot be mounted with context=: the Python face (volume.py) and
kubelet's fsGroup rule (ownership.py) decide, the C walker (_walker.c, with _xattr.h) walks and labels."""
