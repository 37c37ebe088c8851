"""A handler module slow to import: its import waits until the file "import-gate"
exists in the current directory (wqd's, in the tests), so a test decides how long
a reload's loading takes."""

import os
import time

from handlers import task  # noqa: F401  (the handler pools name: slow_import:task)

_GIVE_UP_AT = time.monotonic() + 300
while not os.path.exists("import-gate") and time.monotonic() < _GIVE_UP_AT:
    time.sleep(0.1)
