"""The reconciler: tasks whose news never came, lost submits, expired tasks, lost callbacks."""

import json
from datetime import timedelta
from io import StringIO

import pytest
import responses
from django.core.management import call_command
from django.utils import timezone

from billing.models import LedgerEntry
from tests.conftest import KLING_BASE, reserved_task
from tests.kling_fakes import envelope, task_object
from videos.models import CallbackEvent, VideoTask
from videos.reconcile import backoff, reconcile
from videos.services import callback_token

pytestmark = pytest.mark.usefixtures("prices")


def due_task(account, channel, **fields) -> VideoTask:
    """An unfinished task holding its 100-unit reservation, due for a check."""
    due = {"next_check_at": timezone.now() - timedelta(seconds=1)}
    return reserved_task(account, channel, **(due | fields))


def run_reconcile() -> str:
    out = StringIO()
    call_command("reconcile", stdout=out)
    return out.getvalue()


@responses.activate
def test_unfinished_task_without_callback_is_finished_and_charged_once(account, channel):
    task = due_task(account, channel)
    responses.add(
        responses.GET,
        f"{KLING_BASE}/v1/videos/text2video/K1",
        json=envelope(task_object("K1", str(task.pk), "succeed")),
    )

    assert "advanced 1" in run_reconcile()
    assert "checked 0" in run_reconcile()  # finished: never asked again

    task.refresh_from_db()
    assert task.status == "succeed" and task.next_check_at is None
    assert LedgerEntry.objects.filter(kind="charge").count() == 1
    assert len(responses.calls) == 1


@responses.activate
def test_fruitless_checks_back_off(account, channel, settings):
    task = due_task(account, channel)
    unchanged = task_object("K1", str(task.pk), "processing")
    VideoTask.objects.filter(pk=task.pk).update(upstream_payload=unchanged)
    responses.add(responses.GET, f"{KLING_BASE}/v1/videos/text2video/K1", json=envelope(unchanged))
    reconcile()
    task.refresh_from_db()
    first_wait = task.next_check_at - timezone.now()
    assert task.check_count == 1
    VideoTask.objects.filter(pk=task.pk).update(next_check_at=timezone.now())
    reconcile()
    task.refresh_from_db()
    assert task.check_count == 2 and task.next_check_at - timezone.now() > first_wait
    assert backoff(1) == settings.RECONCILE_AFTER
    assert backoff(50) == settings.RECONCILE_MAX_INTERVAL


def test_task_not_due_is_left_alone(account, channel):
    due_task(account, channel, next_check_at=timezone.now() + timedelta(minutes=5))
    assert reconcile().checked == 0


@responses.activate
def test_lost_submit_is_adopted_from_kling_by_external_id(account, channel):
    task = due_task(
        account, channel=None, status="pending", task_id=None, channels_tried=[channel.pk]
    )
    responses.add(
        responses.GET,
        f"{KLING_BASE}/v1/videos/text2video/{task.pk}",
        json=envelope(task_object("K77", str(task.pk), "processing")),
    )

    report = reconcile()

    assert report.adopted == 1
    task.refresh_from_db()
    assert (task.status, task.task_id, task.channel_id) == ("processing", "K77", channel.pk)


@responses.activate
def test_lost_submit_unknown_to_kling_is_failed_and_released(account, channel):
    task = due_task(
        account, channel=None, status="pending", task_id=None, channels_tried=[channel.pk]
    )
    responses.add(
        responses.GET,
        f"{KLING_BASE}/v1/videos/text2video/{task.pk}",
        status=404,
        json={"code": 1203, "message": "task not found", "request_id": "r"},
    )

    assert reconcile().abandoned == 1
    task.refresh_from_db()
    assert task.status == "failed" and "interrupted" in task.failure_reason
    account.refresh_from_db()
    assert account.reserved == 0 and account.quota == 1000


@responses.activate
def test_lost_submit_is_kept_while_kling_cannot_answer(account, channel):
    task = due_task(
        account, channel=None, status="pending", task_id=None, channels_tried=[channel.pk]
    )
    responses.add(
        responses.GET,
        f"{KLING_BASE}/v1/videos/text2video/{task.pk}",
        status=503,
        json={"code": 5001, "message": "maintenance", "request_id": "r"},
    )
    reconcile()
    task.refresh_from_db()
    assert task.status == "pending" and task.next_check_at > timezone.now()


def test_submit_that_never_reached_kling_is_failed(account, channel):
    task = due_task(account, channel=None, status="pending", task_id=None, channels_tried=[])
    assert reconcile().abandoned == 1
    task.refresh_from_db()
    assert task.status == "failed"


def test_task_over_the_maximum_age_is_failed_and_released(account, channel, settings):
    task = due_task(account, channel, next_check_at=timezone.now() + timedelta(hours=1))
    VideoTask.objects.filter(pk=task.pk).update(created_at=timezone.now() - timedelta(days=2))
    assert reconcile().expired == 1
    task.refresh_from_db()
    assert task.status == "failed" and "24 h" in task.failure_reason
    account.refresh_from_db()
    assert account.reserved == 0


def test_interrupted_callback_is_processed_later(account, channel):
    task = due_task(account, channel)
    event = CallbackEvent.objects.create(
        body=json.dumps(task_object("K1", str(task.pk), "succeed")),
        token=callback_token(task.pk),
    )
    CallbackEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - timedelta(minutes=5)
    )
    assert reconcile().callbacks_replayed == 1
    event.refresh_from_db()
    task.refresh_from_db()
    assert event.outcome == "applied" and task.status == "succeed"
    assert LedgerEntry.objects.filter(kind="charge").count() == 1
