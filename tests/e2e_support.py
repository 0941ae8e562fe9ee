"""Shared pieces of the tests that run the relay over real HTTP (pytest-django's live_server)
against the Kling simulator."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import requests
from django.core.management import call_command

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until `predicate()` is truthy; return its value or fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def local_session(raw_key: str | None = None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # every server in these tests is local: never a proxy
    if raw_key:
        session.headers["Authorization"] = f"Bearer {raw_key}"
    return session


def run_task_worker() -> None:
    """Run the queued background tasks (consumer callbacks) once, in this process."""
    # db_worker installs its own SIGINT/SIGTERM handlers; pytest's must survive it.
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", verbosity=0)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class ReceivedCallback:
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """A consumer's callback endpoint on 127.0.0.1: records each POST and answers 200."""

    def __init__(self) -> None:
        self._received: list[ReceivedCallback] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver._received.append(ReceivedCallback(body, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/kling"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def received(self) -> list[ReceivedCallback]:
        with self._lock:
            return list(self._received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
