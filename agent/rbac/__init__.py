"""Least-privilege RBAC from API-server audit logs (`rbac generate`) and a check of given RBAC against what a
subject really did (`rbac check`). Every module is pure except reader.py, the one that opens files."""
