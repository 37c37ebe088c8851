"""The master process (the arbiter) and what only it runs: supervision of the
workers, its HTTP endpoint and metrics, systemd, autoscaling, reloads, and the
children it forks besides workers (queue monitor, reload child)."""
