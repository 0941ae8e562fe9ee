"""The one HTTP client the relay uses to talk to Kling."""

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

from klingrelay.metrics import observe_upstream_call
from klingrelay.request_trace import note_upstream_call

from .credentials import KlingCredential, kling_token
from .models import Channel

logger = logging.getLogger(__name__)

_session = requests.Session()
_session.headers.update({"User-Agent": "kling-relay/1.0"})


class UpstreamUnavailable(Exception):
    """Kling could not be reached or did not answer in time: nothing was accepted."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    body: bytes
    payload: dict[str, Any] | None
    elapsed_ms: float

    @property
    def code(self) -> int | None:
        code = (self.payload or {}).get("code")
        return code if isinstance(code, int) else None

    @property
    def data(self) -> Any:
        return (self.payload or {}).get("data")

    @property
    def message(self) -> str:
        return str((self.payload or {}).get("message", ""))

    @property
    def ok(self) -> bool:
        """Kling's own rule: HTTP 200, code 0 and a `data` member."""
        return self.status == 200 and self.code == 0 and self.data is not None


def send_to_kling(
    channel: Channel,
    method: str,
    path: str,
    *,
    json_body: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    credential: KlingCredential | None = None,
) -> UpstreamResponse:
    """Send one signed request to a channel's Kling host. Raises UpstreamUnavailable."""
    credential = credential or channel.next_credential()
    url = f"{channel.base_url}{path}"
    started = time.monotonic()
    try:
        response = _session.request(
            method,
            url,
            json=json_body,
            params=params,
            headers={"Authorization": f"Bearer {kling_token(credential)}"},
            timeout=(settings.KLING_CONNECT_TIMEOUT, settings.KLING_READ_TIMEOUT),
        )
    except requests.RequestException as error:
        elapsed = (time.monotonic() - started) * 1000
        _report(channel, method, "error", elapsed)
        # The exception text holds the URL only (no headers), so no secret is logged.
        logger.warning(
            "kling %s %s on channel %s failed after %.0f ms: %s",
            method,
            path,
            channel.pk,
            elapsed,
            type(error).__name__,
        )
        raise UpstreamUnavailable(f"{type(error).__name__}: {error}") from error
    elapsed = (time.monotonic() - started) * 1000
    _report(channel, method, response.status_code, elapsed)
    try:
        payload = json.loads(response.content)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = None
    result = UpstreamResponse(response.status_code, response.content, payload, elapsed)
    logger.info(
        "kling %s %s channel=%s status=%s code=%s request_id=%s %.0f ms",
        method,
        path,
        channel.pk,
        result.status,
        result.code,
        (payload or {}).get("request_id", ""),
        elapsed,
    )
    return result


def _report(channel: Channel, method: str, outcome: int | str, elapsed_ms: float) -> None:
    """Every upstream call, answered or not: metrics, and the request's access log line."""
    observe_upstream_call(
        channel_id=channel.pk, method=method, outcome=str(outcome), seconds=elapsed_ms / 1000
    )
    note_upstream_call(channel_id=channel.pk, status=outcome, elapsed_ms=elapsed_ms)
