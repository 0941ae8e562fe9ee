import logging
import uuid

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from .errors import RelayError, kling_error_response

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
