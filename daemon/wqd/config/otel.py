"""Tracing's settings that live outside the YAML: the OTEL_* environment
variables wqd reads itself, checked by `wqd check` without importing
OpenTelemetry (tracing.py imports it, and only when tracing is enabled)."""

import importlib.util
import os
from typing import Optional

EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOL = "http/protobuf"  # the exporter the wqd[otel] extra installs
# What tracing.py imports: all of them must be installed (the wqd[otel] extra).
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


def missing_module() -> Optional[str]:
    """The first OpenTelemetry module tracing needs that is not installed, or None."""
    for name in OTEL_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ModuleNotFoundError:
            return name
    return None


def environment_problem() -> Optional[str]:
    """What is wrong with the OTEL_* variables wqd reads itself, or None (what `wqd check` reports)."""
    unknown = [name for name in exporter_names() if name not in EXPORTERS]
    if unknown:
        return (f"$OTEL_TRACES_EXPORTER names {unknown[0]!r}; wqd knows {', '.join(EXPORTERS)} "
                f"(a comma-separated list)")
    protocol = _otlp_protocol()
    if "otlp" in exporter_names() and protocol != OTLP_PROTOCOL:
        return (f"the OTLP protocol is {protocol!r} ($OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or "
                f"$OTEL_EXPORTER_OTLP_PROTOCOL); wqd exports over {OTLP_PROTOCOL} only")
    return None


def destination() -> str:
    """Where spans go, in words (what `wqd check` says)."""
    found = []
    for name in dict.fromkeys(exporter_names()):
        if name == "otlp":
            endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
                os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces")
            found.append(f"OTLP/HTTP to {endpoint}")
        elif name == "console":
            found.append("stdout (console)")
    return " and ".join(found) or "nowhere (OTEL_TRACES_EXPORTER=none)"


def exporter_names() -> list:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    return [name.strip().lower() for name in names.split(",") if name.strip()] or ["otlp"]


def _otlp_protocol() -> str:
    return (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or OTLP_PROTOCOL).strip().lower()
