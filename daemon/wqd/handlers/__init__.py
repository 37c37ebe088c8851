"""What a pool runs: a Python callable (loading.py) or a command
(exec_handler.py, its process in process.py). Loaded in the worker, checked by `wqd check`."""
