"""The operator's console: an HTML page of the pools, their workers and their
dead letters, served at / of the master's HTTP endpoint (metrics.listen).

It is served from the master's loop like /metrics, so nothing in it may wait:
pages are rendered from what the master holds (view.py, history.py), and the
dead letters, which live on the broker, are read and acted on by a child
process (dead_work.py) whose last answer the pages show. Actions are off
unless console.token_file is set (config/console_tokens.py, auth.py).
"""
