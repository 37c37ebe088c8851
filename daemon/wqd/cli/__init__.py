"""The `wqd` command: the only place that prints to a user and picks exit
codes (main.py), with `wqd status` (status.py) and `wqd publish`/`declare`
(publish.py)."""
