"""A span exporter for test workers: each finished span as one JSON line in a file.

tests/settings.py installs it in a worker process started with
``STEPFLOWS_TEST_SPANS=<file>`` (tests/integration/test_logs_signals.py), so a
test can check the parent links of spans made in another process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any


def install(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a") as f:
                for span in spans:
                    f.write(json.dumps(as_dict(span)) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def as_dict(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "start": span.start_time,
        "pid": os.getpid(),
    }


def read(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
