"""Forking the master's children (workers, the queue monitor)."""

import logging
import os
import sys

log = logging.getLogger("wqd.master")


def fork(child_main, description: str) -> int:
    """Fork; the child runs ``child_main()`` and exits with the code it returns.

    The child never returns into the master's code, whatever happens in it.
    """
    sys.stdout.flush()  # or the child would print the master's buffered output again
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        code = child_main()
    except BaseException:
        log.exception("%s failed.", description)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
