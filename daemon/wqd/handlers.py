"""Resolve "module:callable" handler references in the master, before any fork."""

import importlib
import traceback
from typing import Callable

from wqd.config import ConfigError


def resolve(reference: str) -> Callable:
    """Import ``module:attr.path``; raise ImportError/AttributeError as they come."""
    module_name, _, attr_path = reference.partition(":")
    target = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
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
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            origin = f" ({frame.filename}:{frame.lineno})" if frame and "importlib" not in frame.filename else ""
            errors.append(f"{config.path}: pools[{index}].handler: cannot import {pool.handler!r} "
                          f"from module {module_name!r}: {type(exc).__name__}: {exc}{origin}")
    if errors:
        raise ConfigError("\n".join(errors))
    return handlers
