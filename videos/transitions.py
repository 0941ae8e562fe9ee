"""The one state-transition function. Submit, query, callback and the reconciler all use it.

A task's status only moves forward (pending → submitted → processing → succeed|failed) and
never leaves a terminal state. Reaching `succeed` charges the task's reservation exactly
once; reaching `failed` releases it. The task row is locked for the whole move, so racing
callers are serialised and only the first one to reach a terminal state settles billing.
"""

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.services import charge_reservation, release_reservation

from .consumer_callbacks import schedule_delivery
from .models import STATUS_RANK, TERMINAL_STATUSES, TaskStatus, VideoTask

logger = logging.getLogger(__name__)

KLING_STATUSES = {
    "submitted": TaskStatus.SUBMITTED,
    "processing": TaskStatus.PROCESSING,
    "succeed": TaskStatus.SUCCEED,
    "failed": TaskStatus.FAILED,
}


def apply_upstream_state(
    task_pk: int, payload: dict[str, Any], *, source: str, channel_id: int | None = None
) -> tuple[VideoTask, bool]:
    """Move a task to the state of a Kling task object. Returns (task, changed)."""
    status = KLING_STATUSES.get(str(payload.get("task_status", "")))
    if status is None:
        logger.warning(
            "task %s: %s sent unknown task_status %r", task_pk, source, payload.get("task_status")
        )
        return VideoTask.objects.get(pk=task_pk), False
    return _move_task(
        task_pk,
        status=status,
        payload=payload,
        reason=str(payload.get("task_status_msg") or ""),
        channel_id=channel_id,
        source=source,
    )


def fail_task(task_pk: int, reason: str, *, source: str) -> tuple[VideoTask, bool]:
    """Fail a task for a reason of the relay's own (refused, unreachable, abandoned)."""
    return _move_task(
        task_pk,
        status=TaskStatus.FAILED,
        payload=None,
        reason=reason,
        channel_id=None,
        source=source,
    )


def _move_task(
    task_pk: int,
    *,
    status: TaskStatus,
    payload: dict[str, Any] | None,
    reason: str,
    channel_id: int | None,
    source: str,
) -> tuple[VideoTask, bool]:
    with transaction.atomic():
        task = VideoTask.objects.select_for_update().get(pk=task_pk)
        # Which Kling task and channel this is holds even for late news: a submit answer
        # that arrives after a faster callback must still record the channel.
        identity = _record_identity(task, payload, channel_id)
        previous_status = task.status
        stale = previous_status in TERMINAL_STATUSES or (
            STATUS_RANK[status] < STATUS_RANK[TaskStatus(previous_status)]
        )
        news = status != previous_status or (
            payload is not None and payload != task.upstream_payload
        )
        if stale or not news:  # duplicate, late or out-of-order: never move back
            if identity:
                task.save(update_fields=identity)
            return task, False
        now = timezone.now()
        if payload is not None:
            task.upstream_payload = payload
        if status != TaskStatus.PENDING and task.submitted_at is None:
            task.submitted_at = now
        task.status = status
        task.next_check_at = now + timedelta(seconds=settings.RECONCILE_AFTER)
        task.check_count = 0
        if status == TaskStatus.SUCCEED:
            _record_video(task, payload or {})
            task.finished_at = now
            charge_reservation(
                account_id=task.owner_id,
                task_ref=task.pk,
                amount=task.reserved_quota,
                api_key_id=task.api_key_id,
                note=f"{task.action} {task.model_name} {task.mode} {task.duration}s",
            )
            task.charged_quota = task.reserved_quota
            task.next_check_at = None
        elif status == TaskStatus.FAILED:
            task.failure_reason = reason or "Kling reported the task as failed"
            task.finished_at = now
            release_reservation(account_id=task.owner_id, amount=task.reserved_quota)
            task.next_check_at = None
        task.save()
        if task.status != previous_status:
            schedule_delivery(task, payload)
    logger.info("task %s -> %s (via %s)", task.pk, task.status, source)
    return task, True


def _record_identity(
    task: VideoTask, payload: dict[str, Any] | None, channel_id: int | None
) -> list[str]:
    """Fill in Kling's task id and the channel, once; returns the fields it set."""
    fields = []
    upstream_task_id = str((payload or {}).get("task_id") or "")
    if upstream_task_id and not task.task_id:
        owner = VideoTask.objects.filter(task_id=upstream_task_id).exclude(pk=task.pk).first()
        if owner is None:
            task.task_id = upstream_task_id
            fields.append("task_id")
        else:  # Kling's ids are unique: this is an upstream anomaly, not ours to crash on
            logger.error(
                "task %s: Kling task id %s already belongs to task %s; not recorded",
                task.pk,
                upstream_task_id,
                owner.pk,
            )
    if channel_id and not task.channel_id:
        task.channel_id = channel_id
        fields.append("channel")
    return fields


def _record_video(task: VideoTask, payload: dict[str, Any]) -> None:
    videos = (payload.get("task_result") or {}).get("videos") or []
    if videos and isinstance(videos[0], dict):
        task.video_id = str(videos[0].get("id") or "")[:128]
        task.video_url = str(videos[0].get("url") or "")[:2048]
