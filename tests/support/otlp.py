"""An OTLP/HTTP trace receiver on loopback, for tests: what a collector at
``endpoint`` would be sent, decoded (opentelemetry-proto, which comes with the
OTLP exporter of the wqd[otel] extra)."""

from __future__ import annotations

import gzip
import http.server
import threading
import zlib

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {Span.SPAN_KIND_CONSUMER: "consumer", Span.SPAN_KIND_PRODUCER: "producer",
         Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_SERVER: "server"}
STATUSES = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(key_values) -> dict:
    return {item.key: _value(item.value) for item in key_values}


class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` a server on 127.0.0.1 taking
    POST /v1/traces; ``receiver.spans()`` is every span received so far, as
    dicts (ids in hex, kind and status as words, attributes and resource as dicts)."""

    def __init__(self):
        self._spans = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request, self.path)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp receiver", daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _add(self, request, path: str) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append({
                        "path": path, "name": span.name, "kind": KINDS.get(span.kind, span.kind),
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(), "trace_state": span.trace_state,
                        "attributes": _attributes(span.attributes), "resource": resource,
                        "status": STATUSES.get(span.status.code, span.status.code),
                        "status_message": span.status.message,
                        "events": [{"name": event.name, "attributes": _attributes(event.attributes)}
                                   for event in span.events],
                        "start": span.start_time_unix_nano,
                    })
        with self._lock:
            self._spans.extend(found)

    def spans(self, name: str | None = None) -> list:
        with self._lock:
            return sorted((span for span in self._spans if name is None or span["name"] == name),
                          key=lambda span: span["start"])
