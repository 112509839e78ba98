"""The RDS side: ``control`` (describe, resolve clusters, list log files) and ``download`` (the
portion planner and the whole-file REST client)."""
