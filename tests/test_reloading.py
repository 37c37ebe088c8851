"""The reload's loading child, driven directly: what it sends back, and the
bounds on its memory and on the error text (the time bound, and the master's
loop around it, are tested end to end in test_master_hostile.py)."""

import importlib
import os
import sys

from tests.support.waiting import wait_for
from wqd import config as config_module
from wqd.errors import MAX_ERROR_CHARS, bounded
from wqd.handlers import code_version
from wqd.master.reloading import RELOAD_MEMORY_BYTES, Reload

CONFIG = """\
pools:
  - name: default
    queue: work
    handler: {handler}
"""


def load_in_child(path, preloaded=()):
    """Run a Reload as the master's loop does; return ((config, code version), error)."""
    reload = Reload(str(path), close_inherited=lambda: None, preloaded=preloaded)

    def reaped():
        reload.read()
        pid, status = os.waitpid(reload.pid, os.WNOHANG)
        return (status,) if pid else None

    (status,) = wait_for(reaped, 60, interval=0.02, message="loading child ended")
    return reload.ended(status)


def write_module(directory, name: str, source: str, monkeypatch) -> None:
    (directory / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(directory))


def test_a_valid_file_comes_back_as_the_config_the_master_would_load(tmp_path, monkeypatch):
    write_module(tmp_path, "fine_handler", "def task(message):\n    pass\n", monkeypatch)
    path = tmp_path / "wqd.yaml"
    path.write_text(CONFIG.format(handler="fine_handler:task"))
    (config, code), error = load_in_child(path)
    assert error is None and config == config_module.load(str(path)) and "fine_handler" in code.modules


def test_a_handler_module_that_allocates_too_much_at_import_fails_the_reload_at_once(tmp_path, monkeypatch):
    write_module(tmp_path, "hog_handler", f"_hoard = bytes({3 * RELOAD_MEMORY_BYTES})\n"
                                          "def task(message):\n    pass\n", monkeypatch)
    path = tmp_path / "wqd.yaml"
    path.write_text(CONFIG.format(handler="hog_handler:task"))
    loaded, error = load_in_child(path)
    assert loaded is None
    assert "pools[0].handler: cannot import 'hog_handler:task' from module 'hog_handler': MemoryError" in error


def test_sys_exit_at_import_is_a_failed_reload(tmp_path, monkeypatch):
    write_module(tmp_path, "exiting_handler", "import sys\nsys.exit(0)\n", monkeypatch)
    path = tmp_path / "wqd.yaml"
    path.write_text(CONFIG.format(handler="exiting_handler:task"))
    assert load_in_child(path) == (None, f"loading {path} failed: SystemExit: 0")


def test_a_child_that_dies_without_an_answer_is_a_failed_reload(tmp_path, monkeypatch):
    write_module(tmp_path, "vanishing_handler", "import os\nos._exit(3)\n", monkeypatch)
    path = tmp_path / "wqd.yaml"
    path.write_text(CONFIG.format(handler="vanishing_handler:task"))
    assert load_in_child(path) == (None, f"the process loading {path} exited with code 3 before it was done")


def test_a_long_error_is_cut_and_says_so():
    assert bounded("x" * MAX_ERROR_CHARS) == "x" * MAX_ERROR_CHARS
    cut = bounded("y" * (MAX_ERROR_CHARS + 1))
    assert cut == "y" * MAX_ERROR_CHARS + f" ... (cut: the error was {MAX_ERROR_CHARS + 1} characters long)"


def test_the_child_imports_the_code_on_disk_and_tells_when_it_changed(tmp_path, monkeypatch):
    """This process holds the module as first imported (as the master does);
    the child forgets it, reads the file, and its fingerprint moves with a deploy."""
    write_module(tmp_path, "deployed_v", "VERSION = 1\ndef task(message):\n    pass\n", monkeypatch)
    before = set(sys.modules)
    importlib.import_module("deployed_v")
    running = code_version.imported_since(before)
    assert running.modules == ("deployed_v",)
    path = tmp_path / "wqd.yaml"
    path.write_text(CONFIG.format(handler="deployed_v:task"))
    (_, same), error = load_in_child(path, preloaded=running.modules)
    assert error is None and same == running
    (tmp_path / "deployed_v.py").write_text("VERSION = 2  # deployed\ndef task(message):\n    pass\n")
    (_, deployed), error = load_in_child(path, preloaded=running.modules)
    assert error is None and deployed.modules == running.modules and deployed.fingerprint != running.fingerprint
    (tmp_path / "deployed_v.py").write_text("VERSION = (\n")  # a broken deploy: the reload fails
    loaded, error = load_in_child(path, preloaded=running.modules)
    assert loaded is None and "SyntaxError" in error
