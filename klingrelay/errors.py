"""Kling's error envelope for every error the relay itself raises.

Kling answers errors as `{"code": ..., "message": ..., "request_id": ...}` with the HTTP
status of the error's class (see docs/kling-protocol.md). A Kling client must not be able
to tell a relay error from a Kling one, so every error path ends here.
"""

import logging
import uuid

from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions

from .jsonbody import dump_json

logger = logging.getLogger(__name__)


class RelayError(Exception):
    """An error answered to the consumer in Kling's envelope."""

    http_status = 400
    code = 1200
    default_message = "Invalid request parameters"

    def __init__(
        self, message: str | None = None, *, http_status: int | None = None, code: int | None = None
    ) -> None:
        self.message = message or self.default_message
        if http_status is not None:
            self.http_status = http_status
        if code is not None:
            self.code = code
        super().__init__(self.message)


class InvalidParameter(RelayError):
    http_status, code, default_message = 400, 1201, "Invalid request parameter"


class AuthenticationFailed(RelayError):
    http_status, code, default_message = 401, 1000, "Authentication failed"


class InsufficientQuota(RelayError):
    http_status, code, default_message = 429, 1101, "Account balance is insufficient"


class ResourceNotFound(RelayError):
    http_status, code, default_message = 404, 1203, "The requested resource does not exist"


class ServiceUnavailable(RelayError):
    http_status, code, default_message = 503, 5001, "Service temporarily unavailable"


def request_id_for(request: HttpRequest | None) -> str:
    return getattr(request, "kling_request_id", None) or str(uuid.uuid4())


def kling_error_response(
    request: HttpRequest | None, http_status: int, code: int, message: str
) -> HttpResponse:
    return HttpResponse(
        dump_json({"code": code, "message": message, "request_id": request_id_for(request)}),
        status=http_status,
        content_type="application/json",
    )


def _drf_error_message(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{field}: {_drf_error_message(value)}" for field, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_drf_error_message(item) for item in detail)
    return str(detail)


# DRF's exceptions mapped to the Kling status and code of the same class of error.
_DRF_TO_KLING = [
    (exceptions.NotAuthenticated, 401, 1001),
    (exceptions.AuthenticationFailed, 401, 1002),
    (exceptions.PermissionDenied, 403, 1103),
    (exceptions.NotFound, 404, 1203),
    (exceptions.MethodNotAllowed, 404, 1202),
    (exceptions.UnsupportedMediaType, 400, 1200),
    (exceptions.NotAcceptable, 400, 1200),
    (exceptions.ParseError, 400, 1200),
    (exceptions.Throttled, 429, 1302),
    (exceptions.ValidationError, 400, 1201),
]


def kling_exception_handler(exc: Exception, context: dict):
    """DRF EXCEPTION_HANDLER: every API error in Kling's envelope."""
    request = context.get("request")
    if isinstance(exc, RelayError):
        return kling_error_response(request, exc.http_status, exc.code, exc.message)
    for exc_class, http_status, code in _DRF_TO_KLING:
        if isinstance(exc, exc_class):
            message = _drf_error_message(exc.detail)
            if isinstance(exc, exceptions.NotAuthenticated):
                message = "Authorization header is empty"
            return kling_error_response(request, http_status, code, message)
    if isinstance(exc, exceptions.APIException):  # any other DRF error: its status, Kling's shape
        return kling_error_response(
            request,
            exc.status_code,
            1200 if exc.status_code < 500 else 5000,
            _drf_error_message(exc.detail),
        )
    return None  # unexpected: KlingErrorMiddleware logs it and answers 500 / 5000
