"""Kling's video API, as the relay serves it. Views parse, call one service, answer."""

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from klingrelay.errors import InvalidParameter, RelayError, kling_error_response
from klingrelay.jsonbody import parse_json

from . import selectors, services
from .models import VIDEO_ACTIONS


def _json_body(request: Request) -> Any:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise InvalidParameter(
            "Request body is larger than this relay accepts", code=1200
        ) from None
    try:
        return parse_json(raw or b"null")
    except ValueError as error:
        raise InvalidParameter(f"Request body is not valid JSON: {error}", code=1200) from None


BATCH_QUERY = "batch-query"  # the relay's own extension, not a Kling path


def _method_not_supported() -> RelayError:
    return RelayError("Method or path not supported", http_status=404, code=1202)


class VideoCollectionView(APIView):
    """`/kling/v1/videos/<segment>`: submit (POST an action), list (GET an action), or
    the relay's short query form `GET /kling/v1/videos/<task_id>`."""

    def post(self, request: Request, segment: str) -> HttpResponse:
        if segment == BATCH_QUERY:
            return services.batch_query(request, api_key=request.auth, body=_json_body(request))
        if segment not in VIDEO_ACTIONS:
            raise _method_not_supported()
        return services.submit_task(api_key=request.auth, action=segment, body=_json_body(request))

    def get(self, request: Request, segment: str) -> HttpResponse:
        if segment in VIDEO_ACTIONS:
            return selectors.list_tasks(
                request, api_key=request.auth, action=segment, params=request.query_params
            )
        return services.query_task(request, api_key=request.auth, task_id=segment)


class VideoTaskView(APIView):
    """Kling's own query path: `GET /kling/v1/videos/<action>/<task_id>`."""

    def get(self, request: Request, action: str, task_id: str) -> HttpResponse:
        if action not in VIDEO_ACTIONS:
            raise _method_not_supported()
        return services.query_task(request, api_key=request.auth, task_id=task_id, action=action)


class CallbackView(APIView):
    """Kling posts task updates here. Kling does not sign them: a per-task token does."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> HttpResponse:
        services.receive_callback(
            raw_body=request.body,
            headers=dict(request.headers),
            remote_addr=request.META.get("REMOTE_ADDR"),
            token=request.query_params.get("token", ""),
        )
        return kling_error_response(request, 200, 0, "SUCCEED")
