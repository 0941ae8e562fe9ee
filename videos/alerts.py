"""Health counts and alerts: what an operator must hear about without watching a dashboard.

collect_health_counts() counts four kinds of trouble, each with a cheap indexed query;
check_alerts() compares them with the ALERT_* thresholds, logs every count that reaches
its threshold at WARNING, and posts one JSON alert to ALERT_WEBHOOK_URL, at most once per
ALERT_REPEAT_SECONDS per kind. It runs after every reconcile pass and from
`python manage.py check_alerts`.
"""

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import requests
from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from billing.models import LedgerEntry
from channels_app.models import Channel

from . import reconcile
from .models import AlertState, CallbackDelivery, CallbackEvent, TaskStatus, VideoTask

logger = logging.getLogger(__name__)

FAILED_CALLBACKS_WINDOW = timedelta(hours=1)
FAILED_CHARGES_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class HealthCounts:
    stuck_tasks: int
    failed_callbacks: int  # in the last hour: Kling's we could not use, consumers' given up
    failed_charges: int  # succeeded in the last day without a charge
    disabled_channels: int  # disabled automatically, waiting for an operator


@dataclass
class AlertCheck:
    counts: HealthCounts
    thresholds: dict[str, int]
    raised: list[str] = field(default_factory=list)  # kinds at or over their threshold
    notified: list[str] = field(default_factory=list)  # kinds posted to the webhook now


def collect_health_counts() -> HealthCounts:
    now = timezone.now()
    return HealthCounts(
        stuck_tasks=reconcile.stuck_tasks().count(),
        failed_callbacks=_failed_callbacks_since(now - FAILED_CALLBACKS_WINDOW),
        failed_charges=_failed_charges_since(now - FAILED_CHARGES_WINDOW),
        disabled_channels=Channel.objects.filter(status=Channel.Status.AUTO_DISABLED).count(),
    )


def _failed_callbacks_since(since: datetime) -> int:
    from_kling = CallbackEvent.objects.filter(
        outcome__in=CallbackEvent.FAILED_OUTCOMES, received_at__gte=since
    ).count()
    to_consumers = CallbackDelivery.objects.filter(
        state=CallbackDelivery.State.GAVE_UP, last_attempt_at__gte=since
    ).count()
    return from_kling + to_consumers


def _failed_charges_since(since: datetime) -> int:
    """Succeeded tasks with no charge row. A task's last save is when it finished or
    later, so the (status, updated_at) index narrows the scan to the last day's tasks
    whatever the table's size; each is then checked on the unique charged_task_id."""
    charged = LedgerEntry.objects.filter(charged_task_id=OuterRef("pk"))
    return (
        VideoTask.objects.filter(
            status=TaskStatus.SUCCEED, updated_at__gte=since, finished_at__gte=since
        )
        .filter(~Exists(charged))
        .count()
    )


def alert_thresholds() -> dict[str, int]:
    return {
        "stuck_tasks": settings.ALERT_STUCK_TASKS,
        "failed_callbacks": settings.ALERT_FAILED_CALLBACKS,
        "failed_charges": settings.ALERT_FAILED_CHARGES,
        "disabled_channels": settings.ALERT_DISABLED_CHANNELS,
    }


def check_alerts() -> AlertCheck:
    """Log what is over its threshold; post it to the webhook unless posted recently."""
    counts = collect_health_counts()
    check = AlertCheck(counts=counts, thresholds=alert_thresholds())
    for kind, count in asdict(counts).items():
        threshold = check.thresholds[kind]
        if threshold > 0 and count >= threshold:  # 0 turns an alert off
            check.raised.append(kind)
            logger.warning("alert: %s is %s (threshold %s)", kind, count, threshold)
    if check.raised and settings.ALERT_WEBHOOK_URL:
        now = timezone.now()
        due = [kind for kind in check.raised if _claim(kind, now)]
        if due and _post_webhook(_payload(check, due)):
            check.notified = due
        elif due:  # not delivered: let the next pass try again
            AlertState.objects.filter(kind__in=due, last_sent_at=now).update(last_sent_at=None)
    return check


def _claim(kind: str, now: datetime) -> bool:
    """True for the one caller that may send this kind now. The conditional update is
    atomic, so two reconcilers racing cannot both win the same window."""
    AlertState.objects.get_or_create(kind=kind)
    repeat_after = now - timedelta(seconds=settings.ALERT_REPEAT_SECONDS)
    return bool(
        AlertState.objects.filter(kind=kind)
        .filter(Q(last_sent_at__isnull=True) | Q(last_sent_at__lte=repeat_after))
        .update(last_sent_at=now)
    )


def _payload(check: AlertCheck, kinds: list[str]) -> dict:
    counts = asdict(check.counts)
    problems = "; ".join(
        f"{kind.replace('_', ' ')}: {counts[kind]} (threshold {check.thresholds[kind]})"
        for kind in kinds
    )
    return {
        "text": f"Kling Relay alert: {problems}",
        "counts": counts,
        "thresholds": check.thresholds,
    }


def _post_webhook(payload: dict) -> bool:
    # Only the error's class and status are logged: a webhook URL is itself a secret
    # (Slack-style URLs carry their token), and requests' messages include the URL.
    try:
        response = requests.post(
            settings.ALERT_WEBHOOK_URL, json=payload, timeout=settings.ALERT_WEBHOOK_TIMEOUT
        )
    except requests.RequestException as error:
        logger.warning("alert webhook could not be reached: %s", type(error).__name__)
        return False
    if not response.ok:
        logger.warning("alert webhook answered HTTP %s", response.status_code)
        return False
    return True
