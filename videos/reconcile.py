"""Reconciliation: what the relay does about tasks whose news never came.

- An unfinished task with no news for RECONCILE_AFTER seconds is asked of Kling, and the
  answer goes through the one transition function; a fruitless check backs off.
- A task still pending after RECONCILE_PENDING_AFTER lost its submit (the relay died
  between calling Kling and storing the answer): it is looked up at Kling by the
  external_task_id the relay sent, on each channel it was sent to, and adopted; when no
  channel knows it, it is failed and its reservation released.
- A task unfinished after TASK_MAX_AGE is failed with a clear reason and released.
- A callback stored but never processed (the database failed mid-way) is processed.
- Consumer callback deliveries whose enqueue was lost are enqueued again.

Rows are claimed with select_for_update(skip_locked=True), so several reconcilers on
several machines share the work; every step is idempotent.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from channels_app.client import UpstreamUnavailable, send_to_kling
from channels_app.models import Channel
from channels_app.routing import classify_upstream_answer

from . import alerts
from .consumer_callbacks import CLAIM_LEASE, enqueue_due_deliveries
from .models import CallbackEvent, TaskStatus, VideoTask
from .services import apply_fetched_state, fetch_upstream_state, process_callback_event
from .transitions import apply_upstream_state, fail_task

logger = logging.getLogger(__name__)

UNFINISHED = (TaskStatus.PENDING, TaskStatus.SUBMITTED, TaskStatus.PROCESSING)


@dataclass
class ReconcileReport:
    checked: int = 0
    advanced: int = 0
    adopted: int = 0
    abandoned: int = 0
    expired: int = 0
    callbacks_replayed: int = 0
    deliveries_requeued: int = 0
    errors: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)  # kinds at or over their alert threshold

    def __str__(self) -> str:
        return (
            f"checked {self.checked}, advanced {self.advanced}, adopted {self.adopted}, "
            f"abandoned {self.abandoned}, expired {self.expired}, "
            f"callbacks replayed {self.callbacks_replayed}, "
            f"deliveries re-queued {self.deliveries_requeued}"
            + (f", alerts: {', '.join(self.alerts)}" if self.alerts else "")
        )


def reconcile(limit: int | None = None) -> ReconcileReport:
    """One pass over everything that is due. Safe to run anywhere, any number of times."""
    report = ReconcileReport()
    report.callbacks_replayed = replay_interrupted_callbacks()
    report.expired = expire_old_tasks()
    for task in claim_due_tasks(limit or settings.RECONCILE_BATCH):
        report.checked += 1
        try:
            if task.status == TaskStatus.PENDING:
                outcome = recover_lost_submit(task)
                report.adopted += outcome == "adopted"
                report.abandoned += outcome == "abandoned"
            else:
                report.advanced += check_unfinished_task(task)
        except Exception as error:  # one bad task must not stop the pass
            logger.exception("reconcile: task %s failed", task.pk)
            report.errors.append(f"task {task.pk}: {type(error).__name__}")
    overdue = timezone.now() - CLAIM_LEASE
    report.deliveries_requeued = enqueue_due_deliveries(due_before=overdue)
    report.alerts = alerts.check_alerts().raised
    logger.info("reconcile: %s", report)
    return report


def claim_due_tasks(limit: int) -> list[VideoTask]:
    """Take the unfinished tasks whose check is due, so no other reconciler takes them."""
    now = timezone.now()
    with transaction.atomic():
        tasks = list(
            VideoTask.objects.select_for_update(skip_locked=True)
            .filter(status__in=UNFINISHED, next_check_at__lte=now)
            .order_by("next_check_at")[:limit]
        )
        for task in tasks:
            # Backed off before the check: if this process dies, the task comes back later.
            task.next_check_at = now + timedelta(seconds=backoff(task.check_count + 1))
            task.check_count += 1
        VideoTask.objects.bulk_update(tasks, ["next_check_at", "check_count"])
    # Channels are read after the lock is released: a join would lock their rows too.
    channels = Channel.objects.in_bulk({task.channel_id for task in tasks if task.channel_id})
    for task in tasks:
        task.channel = channels.get(task.channel_id)
    return tasks


def backoff(check_count: int) -> int:
    """Seconds until the next check after `check_count` fruitless ones: 2 min … 30 min."""
    return min(
        settings.RECONCILE_AFTER * 2 ** max(check_count - 1, 0), settings.RECONCILE_MAX_INTERVAL
    )


def check_unfinished_task(task: VideoTask) -> bool:
    """Ask Kling about a submitted/processing task; True if its state moved."""
    upstream = fetch_upstream_state(task)
    if upstream is None:
        return False
    before = task.status
    task = apply_fetched_state(task, upstream)
    return task.status != before


def recover_lost_submit(task: VideoTask) -> str:
    """A pending task whose submit was interrupted: adopt it from Kling, or give it up."""
    external_id = str(task.pk)
    unreachable = False
    for channel in Channel.objects.filter(pk__in=task.channels_tried):
        try:
            upstream = send_to_kling(channel, "GET", f"/v1/videos/{task.action}/{external_id}")
        except UpstreamUnavailable:
            unreachable = True
            continue
        if classify_upstream_answer(upstream) is not None:
            unreachable = True  # the channel cannot say now; ask again later
            continue
        data = upstream.data
        if upstream.ok and isinstance(data, dict) and data.get("task_id"):
            task_info = data.get("task_info") or {}
            if str(task_info.get("external_task_id", external_id)) != external_id:
                continue  # not ours: never adopt someone else's task
            apply_upstream_state(task.pk, data, source="reconcile", channel_id=channel.pk)
            logger.warning("reconcile: adopted lost task %s from channel %s", task.pk, channel.pk)
            return "adopted"
    if unreachable:
        return "retry"
    fail_task(
        task.pk,
        "The submit was interrupted and Kling has no task for it; nothing was charged",
        source="reconcile",
    )
    return "abandoned"


def expire_old_tasks() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.TASK_MAX_AGE)
    expired = 0
    # No ORDER BY (Meta.ordering would add one): MariaDB then walks the status index
    # instead of the primary key.
    for task_pk in (
        VideoTask.objects.filter(status__in=UNFINISHED, created_at__lt=cutoff)
        .order_by()
        .values_list("pk", flat=True)[:1000]
    ):
        _, changed = fail_task(
            task_pk,
            f"No final state from Kling within {settings.TASK_MAX_AGE // 3600} h; "
            "the task was given up and nothing was charged",
            source="reconcile",
        )
        expired += changed
    return expired


def replay_interrupted_callbacks() -> int:
    """Process callbacks that were stored but never processed (e.g. the DB failed)."""
    cutoff = timezone.now() - timedelta(minutes=1)
    replayed = 0
    for event in CallbackEvent.objects.filter(
        outcome=CallbackEvent.Outcome.RECEIVED, received_at__lt=cutoff
    ).order_by("id")[:500]:
        process_callback_event(event)
        replayed += 1
    return replayed


def stuck_tasks():
    """Unfinished tasks with no news for STUCK_AFTER seconds (for alerts and dashboards)."""
    cutoff = timezone.now() - timedelta(seconds=settings.STUCK_AFTER)
    return VideoTask.objects.filter(status__in=UNFINISHED, updated_at__lt=cutoff)
