"""The upgrade audit: a cluster dump in, conflicts and per-workload verdicts for a target version out, and the
documents that remediate them. Pure."""
