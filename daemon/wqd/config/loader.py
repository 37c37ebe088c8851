"""Reading the YAML within limits, and the validator that walks the declared
keys, collecting every error with its file, line and key path."""

import dataclasses
import os
import re
from typing import Any, Callable, Optional

import yaml

from wqd.config.checks import SHOWN_LENGTH, _shown, split_urls
from wqd.config.limits import DEFAULT_CONFIG_PATH, MAX_CONFIG_BYTES, MAX_YAML_CHARACTERS, MAX_YAML_DEPTH, MAX_YAML_NODES
from wqd.config.schema import Config, Section, SectionList, declared_keys
from wqd.config.urls import _percent_encode, _split_userinfo, redact_url
from wqd.errors import ConfigError

_INVALID = object()  # a value that failed its check; the error is already recorded


class _Validator:
    """Walks the loaded YAML along the declared keys, collecting errors."""

    def __init__(self, path: str, lines: dict):
        self.path = path
        self.lines = lines
        self.errors = []

    def error(self, key_path: str, text: str) -> None:
        line = self.lines.get(key_path)
        parent = key_path
        while line is None:  # a missing key: point at its parent
            parent, found = re.subn(r"(\.[^.\[]*|\[\d+\])$", "", parent)
            if not found:
                break
            line = self.lines.get(parent)
        where = f"{self.path}:{line}" if line else self.path
        shown_path = redact_url(key_path)  # a key is text from the file too
        if len(shown_path) > SHOWN_LENGTH:
            shown_path = shown_path[:SHOWN_LENGTH] + "..."
        self.errors.append(f"{where}: {shown_path}: {text}")

    def config(self, data: Any) -> Optional[Config]:
        if data is not None and not isinstance(data, dict):
            self.errors.append(f"{self.path}: expected a mapping at the top level")
            return None
        config = self.section(Config, data, "", path=self.path)
        return None if config is _INVALID else config

    def value(self, check: Any, value: Any, key_path: str) -> Any:
        """The cleaned value, or _INVALID (the error recorded)."""
        if isinstance(check, Section):
            return None if value is None and check.nullable else self.section(check.cls, value, key_path)
        if isinstance(check, SectionList):
            return self.section_list(check, value, key_path)
        try:
            return check(value)
        except ValueError as exc:
            self.error(key_path, f"{exc}, got {_shown(value)}")
            return _INVALID

    def section(self, cls: type, data: Any, key_path: str, **given: Any) -> Any:
        """An instance of ``cls`` from a mapping (defaults filled), or _INVALID."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error(key_path, f"expected a mapping, got {_shown(data)}")
            return _INVALID
        errors_before = len(self.errors)
        keys = declared_keys(cls)
        known = {name for name, _ in keys}
        for name in data:
            if name not in known:
                self.error(_join(key_path, name), "unknown key")
        values, absent = dict(given), []
        for name, field in keys:
            check, sub_path = field.metadata["check"], _join(key_path, name)
            if name in data or isinstance(check, (Section, SectionList)):
                values[field.name] = self.value(check, data.get(name), sub_path)
            elif field.metadata["when_absent"]:
                absent.append(field)
            elif field.default is dataclasses.MISSING:
                self.error(sub_path, "required key is missing")
            if field.metadata["env"] and os.environ.get(field.metadata["env"]):
                values[field.name] = self.environment(check, field.metadata["env"])
        if len(self.errors) > errors_before:
            return _INVALID
        for field in absent:
            values[field.name] = field.metadata["when_absent"](values)
        instance = cls(**values)
        for name, text in getattr(instance, "conflicts", list)():
            self.error(_join(key_path, name), text)
        return _INVALID if len(self.errors) > errors_before else instance

    def section_list(self, spec: SectionList, data: Any, key_path: str) -> Any:
        if not isinstance(data, list) or not data:
            self.error(key_path, f"expected a non-empty list of {spec.noun}s, got {_shown(data)}")
            return _INVALID
        items, seen = [], {}
        for index, item in enumerate(data):
            item_path = f"{key_path}[{index}]"
            items.append(self.section(spec.cls, item, item_path))
            unique = item.get(spec.unique) if isinstance(item, dict) else None
            if isinstance(unique, str) and unique in seen:
                self.error(f"{item_path}.{spec.unique}", f"duplicate {spec.noun} {spec.unique} {_shown(unique)} "
                                                         f"(also {key_path}[{seen[unique]}])")
            elif isinstance(unique, str):
                seen[unique] = index
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    def environment(self, check: Callable[[Any], Any], variable: str) -> Any:
        """A key's value from the environment (URLs separated by commas), which wins over the file."""
        value = split_urls(os.environ[variable])
        try:
            return check(value)
        except ValueError as exc:
            self.errors.append(f"${variable}: {exc}, got {_shown(value)}")
            return _INVALID


def _join(key_path: str, name: Any) -> str:
    """A key's path for messages; a key YAML read as another type (null, a
    number, a date) is shown as Python writes it."""
    name = name if isinstance(name, str) else repr(name)
    return f"{key_path}.{name}" if key_path else name


def _key_lines(node: Any, key_path: str, lines: dict) -> None:
    """Record the line of every key path in a composed YAML node tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub_path = f"{key_path}.{key_node.value}" if key_path else str(key_node.value)
            lines[sub_path] = key_node.start_mark.line + 1
            _key_lines(value_node, sub_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub_path = f"{key_path}[{index}]"
            lines[sub_path] = item.start_mark.line + 1
            _key_lines(item, sub_path, lines)


def parse(text: str, path: str) -> Config:
    """Validate YAML text; raise ConfigError listing every problem."""
    data, lines = _read_yaml(text, path)
    validator = _Validator(path, lines)
    config = validator.config(data)
    if validator.errors:
        raise ConfigError(_without_secrets("\n".join(validator.errors), data))
    return config


def load(path: str) -> Config:
    """Read and validate the file: at most MAX_CONFIG_BYTES of UTF-8 text."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the configuration file is larger than {MAX_CONFIG_BYTES} bytes "
                          f"({MAX_CONFIG_BYTES // 1024 // 1024} MiB), the most wqd reads")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: the configuration file is not UTF-8 text "
                          f"(byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    return parse(text, path)


def default_path() -> str:
    return os.environ.get("WQD_CONFIG") or DEFAULT_CONFIG_PATH


# -- reading YAML within limits --

# libyaml when PyYAML was built with it: several times faster on a large file.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(text: str, path: str):
    """(data, {key path: line}) of a YAML document; ConfigError if it is not
    YAML or exceeds the limits. The limits are checked on the event stream
    before anything is built, so a billion laughs costs its few hundred bytes."""
    try:
        _check_limits(text, path)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {redact_url(problem)[:SHOWN_LENGTH]}") from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML resolves but Python cannot hold: 2026-13-45
        raise ConfigError(f"{path}: invalid YAML: {redact_url(str(exc))[:SHOWN_LENGTH]}") from None
    lines: dict = {}
    _key_lines(node, "", lines)
    return data, lines


def _check_limits(text: str, path: str) -> None:
    """Walk the YAML events once, keeping for each anchor the size of what an
    alias of it expands to; raise ConfigError past MAX_YAML_DEPTH levels,
    MAX_YAML_NODES nodes or MAX_YAML_CHARACTERS characters of scalars."""
    anchors = {}  # anchor -> (nodes, characters) it expands to
    open_collections = [[None, 0, 0]]  # [anchor, nodes, characters] of the document, then each open collection

    def refuse(event, problem):
        raise ConfigError(f"{path}:{event.start_mark.line + 1}: {problem}")

    for event in yaml.parse(text, Loader=_Loader):
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_collections) > MAX_YAML_DEPTH:
                refuse(event, f"the document nests deeper than {MAX_YAML_DEPTH} levels")
            open_collections.append([anchor, 1, 0])
            continue
        if isinstance(event, yaml.ScalarEvent):
            size = (1, len(event.value))
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == entry[0] for entry in open_collections):
                refuse(event, f"alias *{anchor} refers to a collection that contains it")
            if anchor not in anchors:
                continue  # undefined: the composer names it
            size, anchor = anchors[anchor], None
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, *size = open_collections.pop()
        else:
            continue
        if anchor:
            anchors[anchor] = tuple(size)
        receiver = open_collections[-1]
        receiver[1] += size[0]
        receiver[2] += size[1]
        if receiver[1] > MAX_YAML_NODES or receiver[2] > MAX_YAML_CHARACTERS:
            refuse(event, f"the document, its aliases expanded, is larger than wqd accepts "
                          f"({MAX_YAML_NODES} nodes, {MAX_YAML_CHARACTERS} characters)")


def _without_secrets(text: str, data: Any) -> str:
    """``text`` with every password of a URL found anywhere in ``data`` (or in
    $WQD_BROKER_URL) replaced by ***: whatever an error quotes, a password
    stays hidden. Passwords under 4 characters are left to redact_url (each
    would otherwise mask unrelated words)."""
    found = set()

    def collect(value):
        if isinstance(value, str):
            password = _split_userinfo(value)[2]
            if password and len(password) >= 4:
                found.update({password, _percent_encode(password)})
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for key_and_value in value.items():
                collect(key_and_value)

    collect(data)
    collect(split_urls(os.environ.get("WQD_BROKER_URL", "")))
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
