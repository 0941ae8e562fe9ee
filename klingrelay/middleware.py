import logging
import time
import uuid

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from billing.models import ApiKey

from .errors import RelayError, kling_error_response
from .metrics import observe_http_request
from .request_trace import RequestTrace, tracing

logger = logging.getLogger("klingrelay.request")

KLING_PREFIX = "/kling/"


def is_kling_path(request: HttpRequest) -> bool:
    return request.path.startswith(KLING_PREFIX)


class RequestIdMiddleware:
    """Give every request the id that Kling-style answers and log lines carry."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.kling_request_id = str(uuid.uuid4())
        response = self.get_response(request)
        response.headers.setdefault("X-Request-Id", request.kling_request_id)
        return response


class KlingErrorMiddleware:
    """Under /kling/, an unexpected failure still answers in Kling's envelope, never HTML."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception):
        if not is_kling_path(request):
            return None
        if isinstance(exception, RelayError):
            return kling_error_response(
                request, exception.http_status, exception.code, exception.message
            )
        if isinstance(exception, RequestDataTooBig):
            return kling_error_response(
                request, 400, 1200, "Request body is larger than this relay accepts"
            )
        logger.exception(
            "unhandled error request_id=%s path=%s", request.kling_request_id, request.path
        )
        return kling_error_response(request, 500, 5000, "Internal server error")


access_logger = logging.getLogger("klingrelay.access")

# Probes and scrapes come every few seconds, and a page loads many static files: their
# lines would drown the API's. They are still counted in the metrics.
UNLOGGED_PATHS = frozenset({"/metrics", "/healthz"})
STATIC_ROUTE = "static"


def route_of(request: HttpRequest) -> str:
    """The URL pattern that served the request, never its path: paths hold task ids, and
    a metric label per task id would grow without end."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return "/" + match.route
    if request.path.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return STATIC_ROUTE  # answered by WhiteNoise before any URL is resolved
    return "unmatched"


class AccessLogMiddleware:
    """Counts and times every request (Prometheus) and logs one line per API request.

    Sits right after RequestIdMiddleware, so the line carries the request id and the time
    covers every other middleware. What the request did upstream (channel, Kling's task
    id, Kling's status and latency) is noted on a per-request trace by the code that did
    it (see klingrelay.request_trace).
    """

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        with tracing(getattr(request, "kling_request_id", "")) as trace:
            response = self.get_response(request)
        seconds = time.monotonic() - started
        route = route_of(request)
        observe_http_request(
            route=route, method=request.method or "", status=response.status_code, seconds=seconds
        )
        if request.path not in UNLOGGED_PATHS and route != STATIC_ROUTE:
            self._log(request, response, route, seconds, trace)
        return response

    @staticmethod
    def _log(
        request: HttpRequest,
        response: HttpResponse,
        route: str,
        seconds: float,
        trace: RequestTrace,
    ) -> None:
        # DRF sets request.auth on the Django request too, for middleware like this one.
        api_key = getattr(request, "auth", None)
        fields = {
            "request_id": trace.request_id,
            "method": request.method,
            "path": request.path,  # never the query string: the callback token is there
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
            "key_prefix": api_key.prefix if isinstance(api_key, ApiKey) else None,
            "channel_id": trace.channel_id,
            "task_id": trace.task_id,
            "upstream_status": trace.upstream_status,
            "upstream_ms": trace.upstream_ms,
            "upstream_calls": trace.upstream_calls,
        }
        access_logger.info(
            "%s %s %s %.0f ms request_id=%s key=%s channel=%s task=%s upstream=%s",
            request.method,
            request.path,
            response.status_code,
            fields["duration_ms"],
            trace.request_id,
            fields["key_prefix"] or "-",
            trace.channel_id or "-",
            trace.task_id or "-",
            trace.upstream_status or "-",
            extra=fields,
        )
