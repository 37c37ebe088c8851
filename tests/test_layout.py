"""The package's shape, as docs/design.md draws it: each folder is a layer,
imports go one way (cli -> master -> worker -> the lower layers; config at
the bottom, importing nothing of the runtime), no module imports itself back
through others, and no module grows past MAX_LINES."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "daemon" / "wqd"
MAX_LINES = 450
# A module's layer is its folder's (or, at the top, its own name's); it may
# import from its own layer and those below. Same-layer imports must not cycle.
LAYERS = {
    "wqd": 0, "errors": 0, "exits": 0, "logs": 0, "backoff": 0, "message": 0, "examples": 0,
    "config": 1,
    "ipc": 2, "redelivery": 2,
    "broker": 3, "handlers": 3,
    "publishing": 4, "tracing": 4, "outbox": 4,
    "worker": 5,
    "master": 6, "console": 6,
    "cli": 7, "__main__": 7,
}


def modules() -> dict:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "wqd"


def imports(path: pathlib.Path, known: dict) -> set:
    """The wqd modules ``path`` imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "wqd":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "wqd")
    return found


def test_every_layer_is_known():
    unknown = {layer(module) for module in modules()} - set(LAYERS)
    assert not unknown, f"give these folders or modules a layer in LAYERS: {sorted(unknown)}"


def test_imports_go_down_the_layers():
    known = modules()
    upward = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
              for module, path in known.items() for target in imports(path, known)
              if LAYERS[layer(target)] > LAYERS[layer(module)]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_modules():
    known = modules()
    graph = {module: {t for t in imports(path, known) if t in known and t != "wqd"} for module, path in known.items()}
    done, cycles = set(), []

    def visit(module, trail):
        if module in trail:
            cycles.append(" -> ".join(trail[trail.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_longer_than_the_limit():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_the_checks_see_an_upward_import():
    """The graph is read as intended: config.docs imports config.schema (same
    layer), cli.main imports master.arbiter only inside a function."""
    known = modules()
    assert "wqd.config.schema" in imports(known["wqd.config.docs"], known) or \
        "wqd.config" in imports(known["wqd.config.docs"], known)
    assert "wqd.master.arbiter" in imports(known["wqd.cli.main"], known)


def _picture(text: str) -> str:
    start = text.index("    wqd run: the master")
    return text[start:text.index("\n\n\n", start) if "\n\n\n" in text[start:] else len(text)].split("```")[0].rstrip()


def test_the_process_picture_is_the_same_in_the_package_and_the_design_page_and_names_real_files():
    import re

    import wqd
    design = (PACKAGE.parents[1] / "docs" / "design.md").read_text()
    in_package, in_docs = _picture(wqd.__doc__), _picture(design)
    assert in_package == in_docs, "docs/design.md's picture differs from the wqd package docstring's"
    named = set(re.findall(r"\b[a-z_]+/(?:[a-z_]+\.py)?(?=[ ,)])|\b[a-z_]+\.py\b", in_package))
    missing = sorted(name for name in named if not (PACKAGE / name).exists())
    assert not missing, f"the picture names files that are not in daemon/wqd: {missing}"
    assert {"master/arbiter.py", "worker/consumer.py", "ipc/reporting.py"} <= named
