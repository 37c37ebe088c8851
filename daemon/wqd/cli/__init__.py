"""The `wqd` command: the only place that prints to a user and picks exit
codes. main.py parses the command line and runs `check`, `run`, `publish`,
`declare` and `status`; dead.py `wqd dead *`; status.py gathers and formats
`wqd status`; publish.py is the commands' side of publishing; common.py what
they share."""
