""""Has this message been here before?": attempts of workers that died
(lost_attempts.py), messages already finished (deduplication.py) and the
ledger's state file (ledger_file.py)."""
