"""Health counts and alerts: counted from real rows, logged, posted at most once a window."""

import json
import logging
from datetime import datetime, timedelta
from io import StringIO

import pytest
import requests
import responses
from django.core.management import call_command
from django.utils import timezone

from billing.models import LedgerEntry
from channels_app.models import Channel
from tests.conftest import make_task
from videos.alerts import HealthCounts, check_alerts, collect_health_counts
from videos.models import AlertState, CallbackDelivery, CallbackEvent, VideoTask
from videos.reconcile import reconcile

HOOK = "https://alerts.test/hooks/T0/B0/secret-path"


@pytest.fixture(autouse=True)
def alert_settings(settings):
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_REPEAT_SECONDS = 3600
    settings.ALERT_STUCK_TASKS = 1
    settings.ALERT_FAILED_CALLBACKS = 2
    settings.ALERT_FAILED_CHARGES = 1
    settings.ALERT_DISABLED_CHANNELS = 1
    return settings


def ago(**delta) -> datetime:
    return timezone.now() - timedelta(**delta)


def make_stuck_task(account, settings) -> VideoTask:
    task = make_task(account, status="processing")
    VideoTask.objects.filter(pk=task.pk).update(updated_at=ago(seconds=settings.STUCK_AFTER + 60))
    return task


def make_succeeded_task(account, *, charged: bool, finished=None) -> VideoTask:
    finished = finished or timezone.now()
    task = make_task(account, status="succeed", finished_at=finished)
    VideoTask.objects.filter(pk=task.pk).update(updated_at=finished)
    if charged:
        LedgerEntry.objects.create(
            account=account, kind="charge", amount=-100, balance_after=900, charged_task_id=task.pk
        )
    return task


def make_callback_event(outcome: str, received_at=None) -> CallbackEvent:
    event = CallbackEvent.objects.create(body="{}", outcome=outcome)
    if received_at is not None:
        CallbackEvent.objects.filter(pk=event.pk).update(received_at=received_at)
    return event


def make_delivery(task: VideoTask, state: str, last_attempt_at) -> CallbackDelivery:
    return CallbackDelivery.objects.create(
        task=task,
        url="https://consumer.test/hook",
        body="{}",
        task_status=task.status,
        state=state,
        next_attempt_at=last_attempt_at,
        last_attempt_at=last_attempt_at,
    )


def make_channel(name: str, status: int) -> Channel:
    return Channel.objects.create(name=name, key=f"{name}-ak|{name}-sk", status=status)


def test_health_counts_come_from_the_rows_that_matter(account, settings):
    make_stuck_task(account, settings)
    make_task(account, status="processing")  # recent news: not stuck
    make_task(account, status="failed")  # finished: never stuck

    for outcome in ("bad_token", "unmatched", "invalid"):
        make_callback_event(outcome)
    make_callback_event("applied")  # fine
    make_callback_event("bad_token", received_at=ago(hours=2))  # too old
    done = make_task(account, status="succeed", task_id="K1")
    make_delivery(done, "gave_up", last_attempt_at=ago(minutes=5))
    make_delivery(done, "gave_up", last_attempt_at=ago(hours=3))  # too old
    make_delivery(done, "delivered", last_attempt_at=ago(minutes=5))

    make_succeeded_task(account, charged=False)  # succeeded, never charged
    make_succeeded_task(account, charged=True)
    make_succeeded_task(account, charged=False, finished=ago(days=2))  # outside the window

    make_channel("broken", Channel.Status.AUTO_DISABLED)
    make_channel("parked", Channel.Status.DISABLED)  # an admin's choice: not an alert
    make_channel("fine", Channel.Status.ENABLED)

    assert collect_health_counts() == HealthCounts(
        stuck_tasks=1, failed_callbacks=4, failed_charges=1, disabled_channels=1
    )


def test_counts_at_their_threshold_are_logged_at_warning(account, settings, caplog):
    make_channel("broken", Channel.Status.AUTO_DISABLED)
    make_callback_event("unmatched")  # 1 of a threshold of 2: no alert
    settings.ALERT_STUCK_TASKS = 0  # 0 turns an alert off
    make_stuck_task(account, settings)

    with caplog.at_level(logging.WARNING, logger="videos.alerts"):
        check = check_alerts()

    assert check.raised == ["disabled_channels"]
    warnings = [r for r in caplog.records if r.name == "videos.alerts"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert "disabled_channels is 1 (threshold 1)" in warnings[0].getMessage()


def test_nothing_to_alert_logs_nothing_and_posts_nothing(db, settings, caplog):
    settings.ALERT_WEBHOOK_URL = HOOK

    with responses.RequestsMock(), caplog.at_level(logging.WARNING, logger="videos.alerts"):
        check = check_alerts()  # RequestsMock fails on any unexpected request

    assert check.raised == [] and check.notified == []
    assert not [r for r in caplog.records if r.name == "videos.alerts"]


def test_webhook_is_posted_once_per_repeat_window_per_kind(db, settings):
    settings.ALERT_WEBHOOK_URL = HOOK
    make_channel("broken", Channel.Status.AUTO_DISABLED)

    with responses.RequestsMock() as mock:
        mock.add(responses.POST, HOOK, status=200)
        first = check_alerts()
        second = check_alerts()  # same trouble, same window: no second post

        assert first.notified == ["disabled_channels"] and second.notified == []
        assert len(mock.calls) == 1
        sent = json.loads(mock.calls[0].request.body)
        assert "disabled channels: 1 (threshold 1)" in sent["text"]
        assert sent["counts"] == {
            "stuck_tasks": 0,
            "failed_callbacks": 0,
            "failed_charges": 0,
            "disabled_channels": 1,
        }
        assert sent["thresholds"]["disabled_channels"] == 1

        # A new kind of trouble is posted at once, alone, even within the other's window.
        make_channel("broken-too", Channel.Status.AUTO_DISABLED)
        for _ in range(2):
            make_callback_event("bad_token")
        third = check_alerts()
        assert third.notified == ["failed_callbacks"]
        assert len(mock.calls) == 2
        assert "disabled channels" not in json.loads(mock.calls[1].request.body)["text"]

        # Once the window has passed, the trouble that is still there is posted again.
        AlertState.objects.update(last_sent_at=ago(seconds=settings.ALERT_REPEAT_SECONDS + 1))
        assert check_alerts().notified == ["failed_callbacks", "disabled_channels"]
        assert len(mock.calls) == 3


def test_a_failed_webhook_is_tried_again_and_its_url_never_logged(db, settings, caplog):
    settings.ALERT_WEBHOOK_URL = HOOK
    make_channel("broken", Channel.Status.AUTO_DISABLED)

    with responses.RequestsMock() as mock, caplog.at_level(logging.WARNING):
        mock.add(responses.POST, HOOK, body=requests.ConnectionError(f"cannot reach {HOOK}"))
        assert check_alerts().notified == []
        mock.replace(responses.POST, HOOK, status=500)
        assert check_alerts().notified == []
        mock.replace(responses.POST, HOOK, status=200)
        assert check_alerts().notified == ["disabled_channels"]
        assert len(mock.calls) == 3

    assert "secret-path" not in caplog.text
    assert "HTTP 500" in caplog.text


def test_every_reconcile_pass_checks_alerts(db, settings):
    settings.ALERT_WEBHOOK_URL = HOOK
    make_channel("broken", Channel.Status.AUTO_DISABLED)

    with responses.RequestsMock() as mock:
        mock.add(responses.POST, HOOK, status=200)
        report = reconcile()

        assert report.alerts == ["disabled_channels"]
        assert "alerts: disabled_channels" in str(report)
        assert len(mock.calls) == 1


def test_check_alerts_command_prints_the_counts(db, settings):
    make_channel("broken", Channel.Status.AUTO_DISABLED)
    settings.ALERT_STUCK_TASKS = 0
    out = StringIO()

    call_command("check_alerts", stdout=out)

    printed = out.getvalue()
    assert "stuck_tasks: 0 (threshold off)" in printed
    assert "failed_callbacks: 0 (threshold 2)" in printed
    assert "failed_charges: 0 (threshold 1)" in printed
    assert "disabled_channels: 1 (threshold 1)  ALERT" in printed
