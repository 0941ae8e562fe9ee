"""Money under concurrency, with real threads and real row locks (MariaDB only)."""

import json
import threading

import pytest
import responses
from django.db import connection
from rest_framework.test import APIClient

from billing.models import ApiKey, LedgerEntry, Price
from channels_app.models import Channel
from tests.conftest import KLING_BASE, SECRET_KEY, make_consumer, reserved_task
from tests.kling_fakes import envelope, task_object
from tests.threads import run_at_once
from videos.models import CallbackEvent, VideoTask
from videos.services import callback_token

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def setup_relay():
    Channel.objects.create(name="c", key=f"ak|{SECRET_KEY}", base_url=KLING_BASE)
    Price.objects.create(model_name="kling-v1", mode="std", duration="5", quota=100)


def test_twenty_simultaneous_succeed_callbacks_charge_once(setup_relay):
    account = make_consumer("alice", quota=1000)
    task = reserved_task(account, task_id="777")
    raw = json.dumps(task_object("777", str(task.pk), "succeed")).encode()
    url = f"/kling/internal/callback?token={callback_token(task.pk)}"

    statuses = run_at_once(
        20,
        lambda _: (
            APIClient().generic("POST", url, raw, content_type="application/json").status_code
        ),
    )

    assert statuses == [200] * 20
    assert LedgerEntry.objects.filter(kind="charge").count() == 1
    account.refresh_from_db()
    assert (account.quota, account.reserved) == (900, 0)
    assert CallbackEvent.objects.count() == 20
    assert CallbackEvent.objects.filter(outcome="applied").count() == 1


def test_twenty_concurrent_submits_against_quota_for_five_accept_five(setup_relay):
    account = make_consumer("bob", quota=500)
    raw_keys = [ApiKey.issue(account)[1] for _ in range(20)]
    counter = iter(range(10**6))
    lock = threading.Lock()

    def kling_accepts(request):
        with lock:
            number = next(counter)
        sent = json.loads(request.body)
        data = {
            "task_id": f"t{number}",
            "task_status": "submitted",
            "task_info": {"external_task_id": sent["external_task_id"]},
            "created_at": 1,
            "updated_at": 1,
        }
        return 200, {}, json.dumps(envelope(data))

    def submit(index: int) -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_keys[index]}")
        return client.post(
            "/kling/v1/videos/text2video", {"prompt": "x"}, format="json"
        ).status_code

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(
            responses.POST, f"{KLING_BASE}/v1/videos/text2video", callback=kling_accepts
        )
        statuses = run_at_once(20, submit)

    assert sorted(statuses) == [200] * 5 + [429] * 15
    assert VideoTask.objects.count() == 5
    account.refresh_from_db()
    assert (account.quota, account.reserved) == (500, 500)


def test_concurrent_success_and_failure_news_settle_once(setup_relay):
    """Callbacks saying succeed and failed race: whichever wins, billing settles once."""
    account = make_consumer("carol", quota=1000)
    task = reserved_task(account, task_id="888")
    url = f"/kling/internal/callback?token={callback_token(task.pk)}"
    bodies = [
        json.dumps(task_object("888", str(task.pk), "succeed" if i % 2 else "failed")).encode()
        for i in range(10)
    ]
    run_at_once(
        10, lambda i: APIClient().generic("POST", url, bodies[i], content_type="application/json")
    )
    task.refresh_from_db()
    account.refresh_from_db()
    charges = LedgerEntry.objects.filter(kind="charge").count()
    if task.status == "succeed":
        assert charges == 1 and (account.quota, account.reserved) == (900, 0)
    else:
        assert charges == 0 and (account.quota, account.reserved) == (1000, 0)


def test_database_is_mariadb():
    assert connection.vendor == "mysql"
