"""The configuration's names, defaults and limits, shared by its checks and its loader."""

DEFAULT_CONFIG_PATH = "/etc/wqd/wqd.yaml"
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
# `wqd publish --url`'s password: a command line is readable by every local user.
BROKER_PASSWORD_VARIABLE = "WQD_BROKER_PASSWORD"
# The environment variables that hold a broker password. The commands exec
# handlers run never see them (handlers/process.py: inherited_environment).
SECRET_VARIABLES = ("WQD_BROKER_URL", BROKER_PASSWORD_VARIABLE, "WQD_OUTBOX_DSN")

# Limits on the file, so that loading it (at check, start and reload) takes
# bounded time and memory whatever it holds: its size, the size of the
# document once YAML aliases are expanded (a "billion laughs" file is a few
# hundred bytes), and how deeply it nests. A real configuration is far below.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_NODES = 10_000
MAX_YAML_CHARACTERS = 2 * MAX_CONFIG_BYTES
MAX_YAML_DEPTH = 32

# The longest duration a key takes: a year is past any real timeout, and
# well within what sleep(), select() and the monotonic clock accept.
MAX_SECONDS = 365 * 24 * 3600
# The longest retry delay: a delay queue expires (x-expires) after twice the
# delay plus a minute, and RabbitMQ refuses expiries above 2^32-1 ms (49 days).
MAX_RETRY_DELAY = 24 * 24 * 3600
# AMQP carries the heartbeat and the prefetch count as 16-bit numbers.
MAX_AMQP_SHORT = 65535
# Worker processes in one pool: the master forks them all at once.
MAX_WORKERS = 1000
# Message ids the master remembers as finished: about 32 bytes each (deduplication.py).
MAX_DEDUPLICATION_CAPACITY = 50_000_000
DEFAULT_STATE_FILE_NAME = "finished-ids"
# Longer values are cut in error messages (a 1 MiB string is not an error line).

# Deliveries lost to connection failures (broker restarts, network) that a
# message may suffer on top of the max_retries + 1 attempts wqd counts.
DELIVERY_LIMIT_MARGIN = 10
# The largest max_retries of a quorum pool. A message being redelivered keeps
# the quorum queue's log from being truncated past it, so its delivery limit
# must stay small; max_retries + 1 + DELIVERY_LIMIT_MARGIN is at most 111.
MAX_QUORUM_RETRIES = 100
