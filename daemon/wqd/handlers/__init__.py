"""What a pool runs: a Python callable (loading.py) or a command
(exec_handler.py). Loaded in the worker, checked by `wqd check`."""
