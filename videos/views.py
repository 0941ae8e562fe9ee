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
from .schema import (
    VideoActionSchema,
    action_query_schema,
    batch_query_schema,
    callback_schema,
    list_schema,
    query_schema,
    submit_schema,
)


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


def _method_not_supported() -> RelayError:
    return RelayError("Method or path not supported", http_status=404, code=1202)


class VideoActionView(APIView):
    """`/kling/v1/videos/<action>`, one route per Kling action: submit (POST) or list (GET).

    One route per action (not a `<segment>` parameter) so the OpenAPI schema can give each
    action its own body; VideoActionSchema reads the route's action for that."""

    video_action = ""  # set by each route: VideoActionView.as_view(video_action="text2video")
    schema = VideoActionSchema()

    @submit_schema
    def post(self, request: Request) -> HttpResponse:
        return services.submit_task(
            api_key=request.auth, action=self.video_action, body=_json_body(request)
        )

    @list_schema
    def get(self, request: Request) -> HttpResponse:
        return selectors.list_tasks(
            request, api_key=request.auth, action=self.video_action, params=request.query_params
        )


class BatchQueryView(APIView):
    """`POST /kling/v1/videos/batch-query`: the relay's own extension, not a Kling path."""

    @batch_query_schema
    def post(self, request: Request) -> HttpResponse:
        return services.batch_query(request, api_key=request.auth, body=_json_body(request))


class VideoQueryView(APIView):
    """The relay's short query form `GET /kling/v1/videos/<task_id>`, any action.

    Its route comes after the action and batch-query routes, so any other segment is a task
    id; POST here is not a Kling path (404 / 1202, like any unsupported method)."""

    @query_schema
    def get(self, request: Request, task_id: str) -> HttpResponse:
        return services.query_task(request, api_key=request.auth, task_id=task_id)


class VideoTaskView(APIView):
    """Kling's own query path: `GET /kling/v1/videos/<action>/<task_id>`."""

    @action_query_schema
    def get(self, request: Request, action: str, task_id: str) -> HttpResponse:
        if action not in VIDEO_ACTIONS:
            raise _method_not_supported()
        return services.query_task(request, api_key=request.auth, task_id=task_id, action=action)


class CallbackView(APIView):
    """Kling posts task updates here. Kling does not sign them: a per-task token does."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @callback_schema
    def post(self, request: Request) -> HttpResponse:
        services.receive_callback(
            raw_body=request.body,
            headers=dict(request.headers),
            remote_addr=request.META.get("REMOTE_ADDR"),
            token=request.query_params.get("token", ""),
        )
        return kling_error_response(request, 200, 0, "SUCCEED")
