"""One JSON object per log line (LOG_FORMAT=json), for log collectors.

Each line has `time`, `level`, `logger` and `message`, the relay `request_id` when the
line was logged while serving a request, and the fields a call passed with `extra=`
(the access log's method, route, status…). Extra values that are not plain JSON (e.g. the
HttpRequest Django attaches to its own records, whose repr holds the query string and so
the callback token) are left out rather than turned into text.
"""

import json
import logging
from datetime import UTC, datetime
from typing import Any

from .request_trace import current_trace

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = current_trace()
        if trace is not None:
            entry["request_id"] = trace.request_id
        elif getattr(getattr(record, "request", None), "kling_request_id", None):
            # django.request logs a failed request after the middleware have finished.
            entry["request_id"] = record.request.kling_request_id
        for key, value in vars(record).items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_") or not _is_plain_json(value):
                continue
            entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _is_plain_json(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_json(v) for k, v in value.items())
    return False
