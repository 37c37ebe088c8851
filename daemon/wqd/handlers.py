"""Resolve "module:callable" handler references in the master, before any fork."""

import pkgutil
import traceback
from typing import Callable

from wqd.config import ConfigError

# Frames of the import machinery and of this module: an error's origin is the
# user code that raised, so a frame in one of these is not shown.
_MACHINERY = ("importlib", pkgutil.__file__, __file__)


def resolve(reference: str) -> Callable:
    """Import ``module:attr.path``; raise ImportError/AttributeError as they come."""
    target = pkgutil.resolve_name(reference)
    if not callable(target):
        raise TypeError(f"{reference} is a {type(target).__name__}, not a callable")
    return target


def load_all(config) -> dict:
    """Import every pool's handler; raise one ConfigError naming each that fails."""
    handlers, errors = {}, []
    for index, pool in enumerate(config.pools):
        try:
            handlers[pool.name] = resolve(pool.handler)
        except Exception as exc:  # any import-time failure of user code is a config error
            module_name = pool.handler.partition(":")[0]
            errors.append(f"{config.path}: pools[{index}].handler: cannot import {pool.handler!r} "
                          f"from module {module_name!r}: {type(exc).__name__}: {exc}{_origin(exc)}")
    if errors:
        raise ConfigError("\n".join(errors))
    return handlers


def _origin(exc: Exception) -> str:
    """ " (file:line)" of the user code that raised, if any did."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or any(part in frames[-1].filename for part in _MACHINERY):
        return ""
    return f" ({frames[-1].filename}:{frames[-1].lineno})"
