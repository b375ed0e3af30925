"""Kubelet's KEP-1710 rules: feature gates, the file label built from seLinuxOptions and the node's defaults, the
per-volume decision (context= mount, recursive relabel, nothing) and the conflict rules. Pure."""
