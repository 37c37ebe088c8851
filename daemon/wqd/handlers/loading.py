"""Resolve each pool's handler in the master, before any fork: import a
"module:callable", or check that an exec handler's command can run."""

import inspect
import os
import pkgutil
import traceback
from typing import Callable, Optional

from wqd.config import ConfigError, ExecHandler
from wqd.handlers import exec_handler

# Frames of the import machinery and of this module: an error's origin is the
# user code that raised, so a frame in one of these is not shown.
_MACHINERY = ("importlib", pkgutil.__file__, __file__)


class UnsupportedHandler(TypeError):
    """A callable wqd would call without ever running its body (see kind_problem)."""


def resolve(reference: str) -> Callable:
    """Import ``module:attr.path``; raise ImportError/AttributeError as they come,
    TypeError for something that is not a plain callable."""
    target = pkgutil.resolve_name(reference)
    if not callable(target):
        raise TypeError(f"{reference} is a {type(target).__name__}, not a callable")
    problem = kind_problem(target)
    if problem:
        raise UnsupportedHandler(f"{reference!r} is {problem}; wqd runs a handler as a plain function and "
                                 f"acks when it returns, so its body would never run. Write a plain "
                                 f"`def` (call a coroutine with asyncio.run() inside it)")
    return target


def kind_problem(target: Callable) -> Optional[str]:
    """What makes ``target`` unusable as a handler, or None: calling a coroutine
    function or a generator function only creates an object, it runs nothing.
    The same holds for an object whose __call__ is one of these. (A plain
    function that returns a coroutine can only be caught when it returns.)"""
    candidates = [target]  # a function, method or functools.partial of one
    if callable(target) and not inspect.isroutine(target) and not inspect.isclass(target):
        candidates.append(type(target).__call__)
    for candidate in candidates:
        if inspect.iscoroutinefunction(candidate):
            return "an async def function (a coroutine function)"
        if inspect.isasyncgenfunction(candidate):
            return "an async generator function"
        if inspect.isgeneratorfunction(candidate):
            return "a generator function"
    return None


def load(pool) -> Callable:
    """The callable that runs ``pool``'s tasks: its imported handler, or its command's runner."""
    if isinstance(pool.handler, ExecHandler):
        return exec_handler.build(pool)
    return resolve(pool.handler)


def load_all(config) -> dict:
    """Load every pool's handler; raise one ConfigError naming each that fails."""
    handlers, errors = {}, []
    for index, pool in enumerate(config.pools):
        try:
            handlers[pool.name] = load(pool)
        except ConfigError as exc:  # an exec handler's command that cannot run
            errors.append(f"{config.path}: pools[{index}].handler: pool {pool.name!r}: {exc}")
        except UnsupportedHandler as exc:
            errors.append(f"{config.path}: pools[{index}].handler: {exc}")
        except Exception as exc:  # any import-time failure of user code is a config error
            module_name = pool.handler.partition(":")[0]
            errors.append(f"{config.path}: pools[{index}].handler: cannot import {pool.handler!r} "
                          f"from module {module_name!r}: {type(exc).__name__}: {exc}{_origin(exc)}"
                          f"{_search_path_hint(exc)}")
    if errors:
        raise ConfigError("\n".join(errors))
    return handlers


def _search_path_hint(exc: Exception) -> str:
    """Where Python looked, when the module itself was not found: handlers are
    imported relative to the working directory (as gunicorn does) and
    PYTHONPATH, which under systemd or supervisord is not the shell's."""
    if not isinstance(exc, ModuleNotFoundError):
        return ""
    return (f"; modules are looked up in the working directory ({os.getcwd()}) and PYTHONPATH "
            f"({os.environ.get('PYTHONPATH') or 'not set'}), then the installed packages: start wqd where the "
            f"module is (WorkingDirectory= under systemd) or add its directory to PYTHONPATH")


def _origin(exc: Exception) -> str:
    """ " (file:line)" of the user code that raised, if any did."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or any(part in frames[-1].filename for part in _MACHINERY):
        return ""
    return f" ({frames[-1].filename}:{frames[-1].lineno})"
