"""The OpenAPI description of the relay's surface, for drf-spectacular.

Nothing here validates or renders anything. Request bodies are described by the
serializers the relay validates with (videos/validation.py), so each field rule lives in
one place. The response serializers below only describe what the relay answers: Kling's
envelope and task object (docs/kling-protocol.md), passed through or rebuilt by
videos/wire.py, and the error envelope of klingrelay/errors.py.

Kling's JSON objects are open in both directions: the relay forwards fields it does not
know to Kling and passes Kling's new fields back, so every object says
`additionalProperties: true`.
"""

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers

from . import validation
from .models import VIDEO_ACTIONS
from .selectors import MAX_PAGE_NUM, MAX_PAGE_SIZE


def _choices(serializer_class: type[serializers.Serializer], field_path: str) -> list[str]:
    field: Any = serializer_class()
    for name in field_path.split("."):
        field = field.fields[name]
    return list(field.choices)


# Choice sets that share a field name (`mode`, `duration`) need an enum name each:
# settings.ENUM_NAME_OVERRIDES names them from these, read off validation.py's own fields.
VIDEO_MODES = _choices(validation.Text2VideoFields, "mode")
VIDEO_DURATIONS = _choices(validation.Text2VideoFields, "duration")
OMNI_VIDEO_DURATIONS = _choices(validation.OmniVideoFields, "duration")
LIP_SYNC_MODES = _choices(validation.LipSyncFields, "input.mode")

# --- extensions: how spectacular reads the relay's classes ---------------------------


class KlingObjectExtension(OpenApiSerializerExtension):
    """Every serializer describes an open Kling object: unknown fields are allowed."""

    target_class = serializers.Serializer
    match_subclasses = True

    def _is_request_body(self) -> bool:
        cls = self.target if isinstance(self.target, type) else type(self.target)
        return cls.__module__ == validation.__name__

    def get_name(self, auto_schema: AutoSchema, direction: str) -> str | None:
        # validation.py names its classes for the code (`Text2VideoFields`, `_LipSyncInput`);
        # the schema names them for the reader (`Text2VideoRequest`, `LipSyncInput`).
        if not self._is_request_body():
            return None
        cls = self.target if isinstance(self.target, type) else type(self.target)
        name = cls.__name__.lstrip("_")
        return name.removesuffix("Fields") + "Request" if name.endswith("Fields") else name

    def map_serializer(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if self._is_request_body():
            _state_field_rules(self.target, schema)
            schema.update(_CROSS_FIELD_RULES.get(self.get_name(auto_schema, direction), {}))
        return {**schema, "additionalProperties": True}


# DRF refuses NUL in every CharField, and "" or (as it trims) whitespace-only text where
# blank is not allowed.
_NO_NUL = r"^[^\u0000]*$"
_NOT_BLANK = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


def _state_field_rules(serializer: Any, schema: dict[str, Any]) -> None:
    """Rules of DRF's fields that spectacular leaves out of request bodies: non-blank and
    NUL-free text (it states non-blank only when it splits request components), and the
    size bounds of a nested `many=True` serializer."""
    fields = serializer().fields if isinstance(serializer, type) else serializer.fields
    for name, field in fields.items():
        prop = schema.get("properties", {}).get(name)
        if not prop:
            continue
        if isinstance(field, serializers.ListSerializer):
            if field.min_length is not None:
                prop["minItems"] = field.min_length
            if field.max_length is not None:
                prop["maxItems"] = field.max_length
            continue
        if isinstance(field, serializers.ListField):
            field, prop = field.child, prop.get("items") or {}
        if not isinstance(field, serializers.CharField) or prop.get("type") != "string":
            continue
        if field.allow_blank:
            prop["pattern"] = _NO_NUL
        else:
            prop["minLength"] = max(prop.get("minLength", 0), 1)
            prop["pattern"] = _NOT_BLANK if field.trim_whitespace else _NO_NUL


def _present(*names: str) -> dict[str, Any]:
    """A schema that holds when each named text field is there and not blank."""
    # A fresh dict per field: a shared one would be written as a YAML alias.
    properties = {name: {"minLength": 1, "pattern": _NOT_BLANK} for name in names}
    return {"required": list(names), "properties": properties}


# The rules validation.py checks in its serializers' validate(), by component name; tests/
# test_openapi.py checks that the schema and the serializers agree on sample bodies.
_CROSS_FIELD_RULES: dict[str, dict[str, Any]] = {
    "Image2VideoRequest": {"anyOf": [_present("image"), _present("image_tail")]},
    "EffectsInput": {"anyOf": [_present("image"), {"required": ["images"]}]},
    "LipSyncInput": {
        "anyOf": [_present("video_id"), _present("video_url")],
        # OpenAPI 3.0 has no if/then: the rule that depends on `mode` is said in words.
        "description": (
            "`video_id` (a video of one of the caller's tasks) or `video_url`. mode "
            "`text2video` needs `text` and `voice_id`; mode `audio2video` needs `audio_type` "
            "and, by it, `audio_file` or `audio_url`."
        ),
    },
}


class RelayKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """billing.authentication.RelayKeyAuthentication: two credentials, either one works."""

    target_class = "billing.authentication.RelayKeyAuthentication"
    name = ["relayKey", "klingJwt"]

    def get_security_requirement(self, auto_schema: AutoSchema) -> list[dict[str, list]]:
        return [{"relayKey": []}, {"klingJwt": []}]  # OR, not AND

    def get_security_definition(self, auto_schema: AutoSchema) -> list[dict[str, str]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "`Authorization: Bearer kr-…`: a relay key, shown once when an admin "
                    "(or `manage.py issue_key`) issues it."
                ),
            },
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    "`Authorization: Bearer <JWT>` signed exactly as for Kling with the relay "
                    "key's access key and secret key: HS256, `iss` = access key, `exp` "
                    "(required), `nbf`. Kling SDKs that take an AK/SK pair build it themselves."
                ),
            },
        ]


# --- what the relay answers ----------------------------------------------------------


class KlingVideo(serializers.Serializer):
    """A video Kling made (`task_result.videos[]`), or the parent of a video-extend task."""

    id = serializers.CharField()
    url = serializers.CharField(help_text="Kling's URL; it expires (Kling says 30 days).")
    duration = serializers.CharField(help_text='Seconds, as a string, e.g. "5.1".')


class TaskInfo(serializers.Serializer):
    external_task_id = serializers.CharField(
        required=False, help_text="The consumer's own id from the submit body, if one was given."
    )
    parent_video = KlingVideo(required=False, help_text="video-extend: the extended video.")


class TaskResult(serializers.Serializer):
    videos = KlingVideo(many=True)


class TaskObject(serializers.Serializer):
    """Kling's task object: `data` of a submit or query answer, and a callback's body."""

    task_id = serializers.CharField(help_text="Kling's task id.")
    task_status = serializers.ChoiceField(choices=["submitted", "processing", "succeed", "failed"])
    task_status_msg = serializers.CharField(
        required=False, allow_blank=True, help_text="Why a failed task failed."
    )
    task_info = TaskInfo(required=False)
    created_at = serializers.IntegerField(help_text="Unix milliseconds.")
    updated_at = serializers.IntegerField(help_text="Unix milliseconds.")
    task_result = TaskResult(required=False, help_text="Present once the task succeeded.")
    final_unit_deduction = serializers.JSONField(
        required=False, help_text="Units Kling charged its own account, when Kling says."
    )


@extend_schema_field({"type": "integer", "enum": [0], "description": "0: success."})
class _SuccessCode(serializers.IntegerField):
    pass


class _Envelope(serializers.Serializer):
    code = _SuccessCode()
    message = serializers.CharField(help_text='"SUCCEED"')
    request_id = serializers.CharField()


class TaskEnvelope(_Envelope):
    data = TaskObject()


class TaskListEnvelope(_Envelope):
    data = TaskObject(many=True, help_text="The consumer's tasks of this action, newest first.")


class BatchQueryRequest(serializers.Serializer):
    # Checked by services.batch_query; described here because no serializer validates it.
    task_ids = serializers.ListField(
        child=serializers.CharField(min_length=1, trim_whitespace=False),
        min_length=1,
        max_length=settings.BATCH_QUERY_MAX,
        help_text="Kling task ids; ids that are not the caller's come back in `not_found`.",
    )


class BatchQueryResult(serializers.Serializer):
    tasks = TaskObject(many=True, help_text="Found tasks, in the order asked, without repeats.")
    not_found = serializers.ListField(child=serializers.CharField())


class BatchQueryEnvelope(_Envelope):
    data = BatchQueryResult()


class Acknowledgement(_Envelope):
    """What the relay answers Kling's callback: stored, whatever it said."""


class KlingError(serializers.Serializer):
    """Kling's error envelope; the relay's own errors have the same shape and codes."""

    code = serializers.IntegerField(help_text="Kling's error code (see the response's text).")
    message = serializers.CharField()
    request_id = serializers.CharField()


# What each HTTP status means in Kling's codes (docs/kling-protocol.md, klingrelay/errors.py),
# where it means the same on every operation; 400 and 404 are said per operation.
_ERROR_MEANINGS = {
    401: (
        "1001: no Authorization header. 1002: malformed header, unknown, revoked or expired "
        "key, bad JWT. 1003: JWT not yet valid (nbf). 1004: JWT expired."
    ),
    403: "1103: no enabled channel serves this model_name (or Kling's own 1103, as sent).",
    429: (
        "1101: not enough quota for this task's price. 1302/1303: every channel is rate "
        "limited (Kling's answer, as sent)."
    ),
    500: "5000: unexpected error (the relay's, or Kling's as sent).",
    503: "5001: no channel could take the task right now; nothing was charged.",
    504: "5002: Kling timed out on every channel (Kling's answer, as sent).",
}


def _kling_errors(*statuses: int, **meanings: str) -> dict[int, OpenApiResponse]:
    """Error responses in Kling's envelope; `meanings` says e.g. `e400="..."` per operation."""
    return {
        status: OpenApiResponse(
            response=KlingError,
            description=meanings.get(f"e{status}") or _ERROR_MEANINGS[status],
        )
        for status in statuses
    }


_BODY_NOT_JSON = "1200: the body is not a JSON object (not JSON, or too large)."

# --- operations ------------------------------------------------------------------------

_ACTION_PURPOSE = {
    "text2video": "text → video",
    "image2video": "image → video (`image` or `image_tail` required)",
    "multi-image2video": "1–4 reference images → video",
    "omni-video": "Kling O1 / omni: text, images, elements or a video to edit",
    "video-extend": "extend a video of one of the caller's succeeded tasks",
    "lip-sync": "lip-sync a video of one of the caller's tasks, or a video URL",
    "effects": "a Kling video effect applied to one or two images",
}


class VideoActionSchema(AutoSchema):
    """`/kling/v1/videos/<action>`: one route per action shares one view; the route's
    action (view.video_action) picks the request body and names the operation."""

    def _video_action(self) -> str:
        return self.view.video_action

    def get_request_serializer(self) -> Any:
        if self.method == "POST":
            return validation.SUBMIT_FIELDS[self._video_action()]
        return None

    def _get_request_body(self, direction: str = "request") -> dict[str, Any] | None:
        # spectacular requires a body only when some field is required (none is for
        # image2video), but every submit needs a JSON object: 1200 otherwise.
        body = super()._get_request_body(direction)
        if body is not None:
            body["required"] = True
        return body

    def get_operation_id(self) -> str:
        verb = "submit" if self.method == "POST" else "list"
        return f"{verb}_{self._video_action().replace('-', '_')}"

    def get_summary(self) -> str:
        action = self._video_action()
        if self.method == "POST":
            return f"Create a {action} task: {_ACTION_PURPOSE[action]}"
        return f"List the caller's {action} tasks"


submit_schema = extend_schema(
    tags=["submit"],
    description=(
        "Kling's submit endpoint. The body is checked with Kling's rules, priced, the price "
        "reserved from the caller's quota, and sent to a Kling account with the relay's own "
        "`external_task_id` and `callback_url`; Kling's answer comes back as Kling sent it, "
        "with the caller's `external_task_id` put back. Refusals by Kling are passed through "
        "and cost nothing."
    ),
    responses={
        200: OpenApiResponse(TaskEnvelope, description="Kling accepted the task."),
        **_kling_errors(
            400,
            401,
            403,
            404,
            429,
            500,
            503,
            504,
            e400=(
                f"{_BODY_NOT_JSON} 1201: a field breaks Kling's rules (the message starts with "
                "its name), the callback_url is not a public http(s) URL, or no price is set "
                "for the model, mode and duration. 1300/1301: Kling's policy refusal, as sent."
            ),
            e404="Kling's own not-found (1202/1203) for this request, as sent.",
        ),
    },
)

list_schema = extend_schema(
    tags=["query"],
    description="Kling's list endpoint, answered from the relay's records of the caller's tasks.",
    parameters=[
        OpenApiParameter(
            "pageNum", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_NUM}, default=1
        ),
        OpenApiParameter(
            "pageSize", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, default=30
        ),
    ],
    responses={
        200: OpenApiResponse(TaskListEnvelope, description="One page of tasks."),
        **_kling_errors(400, 401, 500, e400="1201: pageNum or pageSize out of range."),
    },
)

_TASK_ID = OpenApiParameter(
    "task_id",
    str,
    OpenApiParameter.PATH,
    description="Kling's task id, or the caller's own `external_task_id`.",
)
_QUERY_DESCRIPTION = (
    "A finished task is answered from the relay's records; an unfinished one is asked of "
    "Kling. Only the task's owner sees it: anyone else gets Kling's not-found."
)
_QUERY_RESPONSES = {
    200: OpenApiResponse(TaskEnvelope, description="The task."),
    **_kling_errors(
        400,
        401,
        404,
        500,
        e400="Kling's own refusal of the query (1200/1201), as sent.",
        e404="1203: no such task among the caller's. 1202: not a Kling action.",
    ),
}

query_schema = extend_schema(
    operation_id="query_task",
    summary="Query a task by id (the relay's short form, any action)",
    tags=["query"],
    description=_QUERY_DESCRIPTION,
    parameters=[_TASK_ID],
    responses=_QUERY_RESPONSES,
)

action_query_schema = extend_schema(
    operation_id="query_action_task",
    summary="Query a task (Kling's path)",
    tags=["query"],
    description=_QUERY_DESCRIPTION,
    parameters=[
        OpenApiParameter(
            "action",
            str,
            OpenApiParameter.PATH,
            enum=list(VIDEO_ACTIONS),
            description="The action the task was submitted with.",
        ),
        _TASK_ID,
    ],
    responses=_QUERY_RESPONSES,
)

batch_query_schema = extend_schema(
    operation_id="batch_query",
    summary="Query many tasks in one call (a relay extension, not a Kling path)",
    tags=["query"],
    description=(
        f"Up to {settings.BATCH_QUERY_MAX} task ids (BATCH_QUERY_MAX). Finished tasks come "
        "from the relay's records, unfinished ones are asked of Kling concurrently."
    ),
    request=BatchQueryRequest,
    responses={
        200: OpenApiResponse(BatchQueryEnvelope, description="The tasks found, and the rest."),
        **_kling_errors(
            400,
            401,
            500,
            e400=f"{_BODY_NOT_JSON} 1201: task_ids is not a list of 1 to BATCH_QUERY_MAX ids.",
        ),
    },
)

callback_schema = extend_schema(
    operation_id="kling_callback",
    summary="Kling's task callback (called by Kling, not by consumers)",
    tags=["callback"],
    description=(
        "Kling posts the task object here when a task's status changes. The body is stored "
        "as received before anything else and the answer is always 200, so Kling stops "
        "retrying; the update is applied only when the `token` matches the task."
    ),
    auth=[],
    parameters=[
        OpenApiParameter(
            "token",
            str,
            description="The per-task token the relay put in the callback_url it gave Kling.",
        )
    ],
    request=TaskObject,
    responses={
        200: OpenApiResponse(Acknowledgement, description="Stored."),
        **_kling_errors(400, 500, e400="1200: the body is larger than the relay accepts."),
    },
)
