"""The wires between the master and its workers, each channel whole in one
file: the report pipe (reporting.py), the shared worker record
(worker_record.py), the quiet switch (quiet.py) and task outcomes
(task_stats.py)."""
