"""What one request did, gathered while it runs, for its access log line.

The access middleware starts a trace for each request; code deep in a flow (the upstream
client, the task flows) notes what it did without the request being passed down to it.
Outside a request (reconciler, task worker, batch-query threads) there is no trace and
noting is a no-op.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestTrace:
    request_id: str = ""
    channel_id: int | None = None
    task_id: str | None = None
    # Of the last upstream call: an HTTP status, or "error" when Kling was not reached.
    upstream_status: int | str | None = None
    upstream_ms: float | None = None
    upstream_calls: int = 0


_current: ContextVar[RequestTrace | None] = ContextVar("klingrelay_request_trace", default=None)


@contextmanager
def tracing(request_id: str) -> Iterator[RequestTrace]:
    trace = RequestTrace(request_id=request_id)
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def current_trace() -> RequestTrace | None:
    return _current.get()


def note_upstream_call(*, channel_id: int, status: int | str, elapsed_ms: float) -> None:
    trace = _current.get()
    if trace is None:
        return
    trace.channel_id = channel_id
    trace.upstream_status = status
    trace.upstream_ms = round(elapsed_ms, 1)
    trace.upstream_calls += 1


def note_task(task_id: str | None) -> None:
    """Kling's id of the task this request is about (None until Kling gave one)."""
    trace = _current.get()
    if trace is not None and task_id:
        trace.task_id = task_id
