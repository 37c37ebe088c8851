"""Load and validate wqd's YAML configuration.

Every key is declared once, as a field of the frozen dataclass its section
becomes: its type, default, check and one line of doc (see ``key``). The
validator walks those declarations; nothing else lists keys or defaults.
Errors are collected, not raised one at a time, so an operator fixes a file in
one pass; each names the file, the line (where YAML knows it) and the key path.

The lowest layer: it imports nothing of wqd's runtime. Its modules:
limits.py (names, defaults, limits), checks.py (value checks), schema.py
(every key, declared once), loader.py (YAML within limits, the validator),
urls.py (broker URLs and their passwords), docs.py (the reference page and
etc/wqd.yaml, rendered from the declarations). What the rest of wqd uses is
imported from here.
"""

from wqd.config.checks import *  # noqa: F403
from wqd.config.limits import *  # noqa: F403
from wqd.config.loader import *  # noqa: F403
from wqd.config.schema import *  # noqa: F403
from wqd.config.urls import *  # noqa: F403
from wqd.errors import ConfigError  # noqa: F401
