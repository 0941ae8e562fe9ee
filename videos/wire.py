"""What the consumer sees: Kling's bytes, with our `external_task_id` swapped for theirs."""

import copy
from typing import Any

from django.http import HttpRequest, HttpResponse

from channels_app.client import UpstreamResponse
from klingrelay.errors import request_id_for
from klingrelay.jsonbody import dump_json

from .models import TaskStatus, VideoTask

JSON_CONTENT_TYPE = "application/json"


def consumer_task_object(task: VideoTask, task_object: dict[str, Any]) -> dict[str, Any]:
    """A Kling task object as the consumer must see it: their external id, or none."""
    shown = copy.deepcopy(task_object)
    task_info = shown.get("task_info")
    if not isinstance(task_info, dict):
        task_info = {}
        shown["task_info"] = task_info
    if task.consumer_external_task_id:
        task_info["external_task_id"] = task.consumer_external_task_id
    else:
        task_info.pop("external_task_id", None)
    return shown


def passthrough(upstream: UpstreamResponse, task: VideoTask) -> HttpResponse:
    """Kling's answer for a task, status and body as sent but for the external id."""
    body = upstream.body
    data = upstream.data
    if isinstance(data, dict) and "task_info" in data:
        payload = dict(upstream.payload or {})
        payload["data"] = consumer_task_object(task, data)
        body = dump_json(payload)
    return HttpResponse(body, status=upstream.status, content_type=JSON_CONTENT_TYPE)


def task_object_from_row(task: VideoTask) -> dict[str, Any]:
    """The task object Kling would answer now, from what the relay knows."""
    if task.upstream_payload and task.upstream_payload.get("task_status") == task.status:
        return task.upstream_payload
    created = int(task.created_at.timestamp() * 1000)
    updated = int(task.updated_at.timestamp() * 1000)
    stored = task.upstream_payload or {}
    task_object: dict[str, Any] = {
        "task_id": task.task_id or "",
        # Kling has no "pending": a task not yet accepted upstream reads as submitted.
        "task_status": TaskStatus.SUBMITTED if task.status == TaskStatus.PENDING else task.status,
        "task_status_msg": task.failure_reason if task.status == TaskStatus.FAILED else "",
        "task_info": dict(stored.get("task_info") or {}),
        "created_at": stored.get("created_at", created),
        "updated_at": updated,
    }
    if task.status == TaskStatus.SUCCEED and task.video_url:
        task_object["task_result"] = {
            "videos": [{"id": task.video_id, "url": task.video_url, "duration": task.duration}]
        }
    return task_object


def task_envelope(request: HttpRequest, data: Any) -> HttpResponse:
    """Kling's success envelope around data the relay answers itself."""
    return HttpResponse(
        dump_json(
            {"code": 0, "message": "SUCCEED", "request_id": request_id_for(request), "data": data}
        ),
        content_type=JSON_CONTENT_TYPE,
    )


def task_answer_from_row(request: HttpRequest, task: VideoTask) -> HttpResponse:
    return task_envelope(request, consumer_task_object(task, task_object_from_row(task)))
