"""AVC denials: parse audit records (records), read them live (netlink) or from audit.log (filesource),
tie them to pods (attribution), count them (metrics), and glue it together (watcher)."""
