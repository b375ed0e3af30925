"""AVC denials: read audit records live (netlink) or from audit.log (filesource), parse them (record, fastpath)
into denials (denial) by event (assembler), tie them to pods (cgroup, procfs, poddir, attribution, applied,
podwatch), count them into the metric objects of agent/metrics.py (counting), and glue it together (watcher)."""
