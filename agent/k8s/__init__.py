"""Kubernetes API objects as values: shapes checked as fields are read, the index of a cluster, and each pod's
volumes resolved to the facts kubelet looks at. Pure."""
