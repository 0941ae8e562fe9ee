"""Fault tests against the Kling simulator: failover, crashes, races, a failing database."""

import json
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Account, ApiKey, LedgerEntry, Price
from channels_app.models import Channel
from tests.conftest import make_consumer, reserved_task
from tests.threads import run_at_once
from videos.models import CallbackEvent, VideoTask
from videos.reconcile import reconcile
from videos.services import callback_token
from videos.simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, KlingSimulator

BODY = {"prompt": "a lighthouse at dusk", "model_name": "kling-v1"}


@pytest.fixture
def sim():
    with KlingSimulator(speed=50) as simulator:
        yield simulator


def sim_channel(sim: KlingSimulator, name: str, priority: int = 0) -> Channel:
    return Channel.objects.create(
        name=name,
        key=f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}",
        base_url=sim.url,
        priority=priority,
    )


@pytest.fixture
def relay(db, settings):
    settings.SERVER_ADDRESS = ""  # no callbacks: these tests deliver them by hand
    Price.objects.create(model_name="kling-v1", mode="std", duration="5", quota=100)
    account = make_consumer("faults", quota=1000)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiKey.issue(account)[1]}")
    client.raise_request_exception = False
    return account, client


def balances(account: Account) -> tuple[int, int]:
    account.refresh_from_db()
    return account.quota, account.reserved


def test_kling_5xx_on_the_first_channel_is_served_by_the_second(sim, relay):
    _account, client = relay
    first, second = sim_channel(sim, "first", priority=10), sim_channel(sim, "second")
    sim.faults.fail_next(1, status=500, code=5000)

    response = client.post("/kling/v1/videos/text2video", BODY, format="json")

    assert response.status_code == 200, response.content
    task = VideoTask.objects.get()
    assert task.channel == second and task.channels_tried == [first.pk, second.pk]
    assert sim.get_task(task.task_id)["task_info"]["external_task_id"] == str(task.pk)


def test_all_channels_down_is_a_kling_5xx_and_releases_the_reservation(sim, relay):
    account, client = relay
    sim_channel(sim, "only")
    sim.stop()

    response = client.post("/kling/v1/videos/text2video", BODY, format="json")

    assert response.status_code == 503
    assert response.json()["code"] == 5001 and response.json()["request_id"]
    assert VideoTask.objects.get().status == "failed"
    assert balances(account) == (1000, 0)


def test_kling_overloaded_everywhere_passes_klings_own_answer(sim, relay):
    account, client = relay
    sim_channel(sim, "a", priority=1), sim_channel(sim, "b")
    sim.faults.fail_next(5, status=503, code=5001)
    response = client.post("/kling/v1/videos/text2video", BODY, format="json")
    assert response.status_code == 503 and response.json()["code"] == 5001
    assert balances(account) == (1000, 0)


def test_crash_between_klings_answer_and_our_commit_is_adopted_and_charged_once(
    sim, relay, settings, monkeypatch
):
    account, client = relay
    sim_channel(sim, "only")
    settings.RECONCILE_PENDING_AFTER = 0
    settings.RECONCILE_AFTER = 0

    def process_dies(*args, **kwargs):
        raise RuntimeError("process killed")

    with monkeypatch.context() as patch:
        patch.setattr("videos.services.apply_upstream_state", process_dies)
        response = client.post("/kling/v1/videos/text2video", BODY, format="json")
    assert response.status_code == 500 and response.json()["code"] == 5000
    task = VideoTask.objects.get()
    assert task.status == "pending" and task.task_id is None
    assert len(sim.tasks()) == 1  # Kling did accept it

    assert reconcile().adopted == 1
    task.refresh_from_db()
    assert task.task_id == sim.tasks()[0]["task_id"]
    assert task.status in ("submitted", "processing")  # the simulator moves on quickly

    sim.advance(task.task_id)
    sim.advance(task.task_id)
    reconcile()
    reconcile()
    task.refresh_from_db()
    assert task.status == "succeed"
    assert LedgerEntry.objects.filter(kind="charge", charged_task_id=task.pk).count() == 1
    assert balances(account) == (900, 0)


def test_database_down_before_the_callback_is_stored_answers_non_2xx(sim, relay, monkeypatch):
    account, client = relay
    sim_channel(sim, "only")
    client.post("/kling/v1/videos/text2video", BODY, format="json")
    task = VideoTask.objects.get()

    def database_gone(*args, **kwargs):
        raise OperationalError(2006, "MySQL server has gone away")

    monkeypatch.setattr(CallbackEvent.objects, "create", database_gone)
    kling = APIClient(raise_request_exception=False)
    payload = json.dumps(dict(sim.get_task(task.task_id), task_status="succeed"))
    response = kling.generic(
        "POST",
        f"/kling/internal/callback?token={callback_token(task.pk)}",
        payload,
        content_type="application/json",
    )

    assert response.status_code == 500 and response.json()["code"] == 5000  # Kling retries
    task.refresh_from_db()
    assert task.status == "submitted" and balances(account) == (1000, 100)


def test_database_failing_after_the_callback_is_stored_is_replayed(sim, relay, monkeypatch):
    account, client = relay
    sim_channel(sim, "only")
    client.post("/kling/v1/videos/text2video", BODY, format="json")
    task = VideoTask.objects.get()
    sim.advance(task.task_id)
    sim.advance(task.task_id)

    def database_gone(*args, **kwargs):
        raise OperationalError(2013, "Lost connection to server during query")

    kling = APIClient(raise_request_exception=False)
    url = f"/kling/internal/callback?token={callback_token(task.pk)}"
    with monkeypatch.context() as patch:
        patch.setattr("videos.services.apply_upstream_state", database_gone)
        response = kling.generic(
            "POST", url, json.dumps(sim.get_task(task.task_id)), content_type="application/json"
        )
    assert response.status_code == 500
    event = CallbackEvent.objects.get()
    assert event.outcome == "received"
    task.refresh_from_db()
    assert task.status == "submitted" and not LedgerEntry.objects.filter(kind="charge").exists()

    CallbackEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - timedelta(minutes=2)
    )
    assert reconcile().callbacks_replayed == 1
    task.refresh_from_db()
    assert task.status == "succeed" and balances(account) == (900, 0)


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_callback_query_and_reconciler_racing_charge_once(sim, settings):
    settings.SERVER_ADDRESS = ""
    settings.RECONCILE_AFTER = 0
    Price.objects.create(model_name="kling-v1", mode="std", duration="5", quota=100)
    account = make_consumer("racer", quota=1000)
    raw_key = ApiKey.issue(account)[1]
    sim_channel(sim, "only")
    submitter = APIClient()
    submitter.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    submitter.post("/kling/v1/videos/text2video", BODY, format="json")
    task = VideoTask.objects.get()
    VideoTask.objects.filter(pk=task.pk).update(next_check_at=timezone.now())
    sim.advance(task.task_id)
    sim.advance(task.task_id)
    finished = json.dumps(sim.get_task(task.task_id))
    url = f"/kling/internal/callback?token={callback_token(task.pk)}"

    def racer(index: int):
        client = APIClient()
        if index % 3 == 0:
            return client.generic("POST", url, finished, content_type="application/json")
        if index % 3 == 1:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
            return client.get(f"/kling/v1/videos/text2video/{task.task_id}")
        return reconcile()

    results = run_at_once(12, racer)

    assert not [r for r in results if isinstance(r, Exception)], results
    task.refresh_from_db()
    assert task.status == "succeed"
    assert LedgerEntry.objects.filter(kind="charge").count() == 1
    assert balances(account) == (900, 0)


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_hundred_concurrent_duplicate_callbacks_charge_once(settings):
    Price.objects.create(model_name="kling-v1", mode="std", duration="5", quota=100)
    account = make_consumer("dup", quota=1000)
    task = reserved_task(account, task_id="D1")
    body = json.dumps(
        {
            "task_id": "D1",
            "task_status": "succeed",
            "task_info": {"external_task_id": str(task.pk)},
            "task_result": {"videos": [{"id": "v", "url": "https://cdn.test/v.mp4"}]},
        }
    )
    url = f"/kling/internal/callback?token={callback_token(task.pk)}"

    statuses = run_at_once(
        100,
        lambda _: (
            APIClient().generic("POST", url, body, content_type="application/json").status_code
        ),
    )

    assert statuses == [200] * 100
    assert LedgerEntry.objects.filter(kind="charge").count() == 1
    assert CallbackEvent.objects.count() == 100
    assert balances(account) == (900, 0)
