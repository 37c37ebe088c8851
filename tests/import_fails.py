"""A handler module whose import fails once the test says so, in a file
"import-fails" in the current directory (wqd's, in the tests): "os._exit" ends
the process with code 0, "sys.exit" calls sys.exit(0), "raise" raises. Before
that it imports fine, so a reload accepts it and only workers started later
meet the failure."""

import os
import sys

from handlers import task  # noqa: F401  (the handler pools name: import_fails:task)

if os.path.exists("import-fails"):
    with open("import-fails") as _how:
        _failure = _how.read().strip()
    if _failure == "os._exit":
        os._exit(0)
    if _failure == "sys.exit":
        sys.exit(0)
    if _failure == "raise":
        raise RuntimeError("this module cannot be imported any more, on purpose")
