"""GET /metrics: who may scrape it, and what the flows count.

Counters are process-wide and only grow, so each test compares a scrape before and after.
Quota counters count only committed changes, so the flow tests use real transactions.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import pytest
import requests
import responses
from django.conf import settings as django_settings
from django.db import OperationalError, connection, transaction
from django.urls import resolve
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from billing.models import LedgerEntry
from billing.services import charge_reservation, reserve_quota
from channels_app.models import Channel
from tests.conftest import KLING_BASE, make_task
from tests.kling_fakes import accept_submit, task_object
from videos.consumer_callbacks import deliver
from videos.models import CallbackDelivery, VideoTask
from videos.services import callback_token

TASK_ID = "781234567890123456"
# The URL pattern that serves a submit, as the route label shows it.
SUBMIT_ROUTE = "/" + resolve("/kling/v1/videos/text2video").route


def scrape(client, **request_extra) -> dict:
    response = client.get("/metrics", **request_extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@responses.activate
def submit(api) -> dict:
    accept_submit("text2video", TASK_ID)
    response = api.post("/kling/v1/videos/text2video", {"prompt": "a cat"}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


# --- who may scrape ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_metrics_token(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "::1"]


def test_metrics_are_served_to_localhost_by_default(client, db):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert b"klingrelay_http_requests_total" in response.content


def test_metrics_are_refused_to_other_addresses(client, db):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert b"klingrelay_" not in response.content


def test_metrics_are_refused_to_a_proxied_request_even_from_localhost(client, db):
    # Behind a reverse proxy on the same host every client arrives from 127.0.0.1.
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="1.2.3.4")

    assert response.status_code == 403


def test_metrics_allowed_ips_accepts_networks(client, db, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]

    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


def test_metrics_token_is_required_when_set(client, db, settings):
    settings.METRICS_TOKEN = "scrape-token-123"

    assert client.get("/metrics").status_code == 403  # localhost alone is not enough
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="scrape-token-123").status_code == 403
    allowed = client.get(
        "/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer scrape-token-123"
    )
    assert allowed.status_code == 200


# --- what the flows count --------------------------------------------------------------


def growth(before: dict, after: dict) -> Callable[..., float]:
    """How much a sample grew between two scrapes."""
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def post_callback(client, task: VideoTask, status: str, token: str) -> None:
    client.generic(
        "POST",
        f"/kling/internal/callback?token={token}",
        json.dumps(task_object(TASK_ID, str(task.pk), status)).encode(),
        content_type="application/json",
    )


@pytest.mark.usefixtures("prices")
def test_submit_counts_the_request_the_upstream_call_and_the_reservation(
    client, transactional_db, api, channel
):
    before = scrape(client)
    submit(api)
    after = scrape(client)

    grew = growth(before, after)
    route = {"route": SUBMIT_ROUTE, "method": "POST"}
    upstream = {"channel": str(channel.pk), "method": "POST"}
    assert grew("klingrelay_http_requests_total", status="200", **route) == 1
    assert grew("klingrelay_http_request_duration_seconds_count", **route) == 1
    assert grew("klingrelay_upstream_requests_total", outcome="200", **upstream) == 1
    assert grew("klingrelay_upstream_request_duration_seconds_count", **upstream) == 1
    assert grew("klingrelay_reservations_total") == 1
    assert grew("klingrelay_reserved_quota_total") == 100
    # Routes, never paths: no task id becomes a label value.
    assert not any(TASK_ID in str(labels) for _, labels in after)


@pytest.mark.usefixtures("prices")
def test_succeed_callback_counts_an_applied_callback_and_one_charge(
    client, transactional_db, api, channel
):
    submit(api)
    task = VideoTask.objects.get()
    before = scrape(client)

    post_callback(client, task, "succeed", callback_token(task.pk))
    post_callback(client, task, "succeed", callback_token(task.pk))  # a duplicate: stale

    grew = growth(before, scrape(client))
    assert grew("klingrelay_callbacks_total", outcome="applied") == 1
    assert grew("klingrelay_callbacks_total", outcome="stale") == 1
    assert grew("klingrelay_charges_total") == 1
    assert grew("klingrelay_charged_quota_total") == 100
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


@pytest.mark.usefixtures("prices")
def test_callback_with_a_bad_token_is_counted_and_charges_nothing(
    client, transactional_db, api, channel
):
    submit(api)
    task = VideoTask.objects.get()
    before = scrape(client)

    post_callback(client, task, "succeed", "forged")

    grew = growth(before, scrape(client))
    assert grew("klingrelay_callbacks_total", outcome="bad_token") == 1
    assert grew("klingrelay_charges_total") == 0


@pytest.mark.usefixtures("prices")
def test_unreachable_kling_counts_an_upstream_error_and_a_release(
    client, transactional_db, api, channel
):
    before = scrape(client)
    with responses.RequestsMock() as mock:
        mock.add(
            responses.POST,
            f"{KLING_BASE}/v1/videos/text2video",
            body=requests.ConnectionError("refused"),
        )
        response = api.post("/kling/v1/videos/text2video", {"prompt": "a cat"}, format="json")

    assert response.status_code == 503
    grew = growth(before, scrape(client))
    upstream = {"channel": str(channel.pk), "method": "POST"}
    assert grew("klingrelay_upstream_requests_total", outcome="error", **upstream) == 1
    assert grew("klingrelay_releases_total") == 1
    assert grew("klingrelay_released_quota_total") == 100


def test_a_rolled_back_charge_is_never_counted(client, transactional_db, account):
    reserve_quota(account_id=account.pk, amount=100)
    before = scrape(client)

    with pytest.raises(RuntimeError), transaction.atomic():
        charge_reservation(account_id=account.pk, task_ref=42, amount=100, api_key_id=None)
        raise RuntimeError("the task's own save failed after the charge")

    assert growth(before, scrape(client))("klingrelay_charges_total") == 0
    assert not LedgerEntry.objects.filter(charged_task_id=42).exists()

    charge_reservation(account_id=account.pk, task_ref=42, amount=100, api_key_id=None)

    grew = growth(before, scrape(client))
    assert grew("klingrelay_charges_total") == 1
    assert grew("klingrelay_charged_quota_total") == 100


def test_consumer_callback_deliveries_count_attempts_and_final_states(
    client, account, channel, settings
):
    task = make_task(account, status="succeed", task_id="K9", channel=channel)
    hook = "https://consumer.test/hook"
    fields = {"task": task, "url": hook, "body": "{}", "task_status": "succeed"}
    delivered = CallbackDelivery.objects.create(next_attempt_at=timezone.now(), **fields)
    given_up = CallbackDelivery.objects.create(next_attempt_at=timezone.now(), **fields)
    too_old = timezone.now() - timedelta(seconds=settings.CONSUMER_CALLBACK_GIVE_UP_AFTER + 1)
    CallbackDelivery.objects.filter(pk=given_up.pk).update(created_at=too_old)
    before = scrape(client)

    with responses.RequestsMock() as mock:
        mock.add(responses.POST, hook, status=200)
        assert deliver(delivered.pk) == "delivered"
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, hook, status=500)
        assert deliver(given_up.pk) == "gave_up"

    grew = growth(before, scrape(client))
    assert grew("klingrelay_consumer_callback_attempts_total", result="2xx") == 1
    assert grew("klingrelay_consumer_callback_attempts_total", result="5xx") == 1
    assert grew("klingrelay_consumer_callback_deliveries_total", state="delivered") == 1
    assert grew("klingrelay_consumer_callback_deliveries_total", state="gave_up") == 1


# --- gauges from the database -----------------------------------------------------------


def test_database_gauges_count_tasks_channels_and_pending_deliveries(client, account, channel):
    make_task(account, status="pending")
    make_task(account, status="submitted", task_id="K1")
    stuck = make_task(account, status="processing", task_id="K2")
    VideoTask.objects.filter(pk=stuck.pk).update(
        updated_at=timezone.now() - timedelta(seconds=django_settings.STUCK_AFTER + 60)
    )
    make_task(account, status="succeed", task_id="K3")
    Channel.objects.create(name="spare", key="ak2|sk2", status=Channel.Status.AUTO_DISABLED)
    CallbackDelivery.objects.create(
        task=stuck,
        url="https://consumer.test/hook",
        body="{}",
        task_status="processing",
        next_attempt_at=timezone.now(),
    )

    samples = scrape(client)

    assert value(samples, "klingrelay_database_up") == 1
    assert value(samples, "klingrelay_tasks_unfinished", status="pending") == 1
    assert value(samples, "klingrelay_tasks_unfinished", status="submitted") == 1
    assert value(samples, "klingrelay_tasks_unfinished", status="processing") == 1
    assert value(samples, "klingrelay_tasks_stuck") == 1
    assert value(samples, "klingrelay_channels", status="enabled") == 1
    assert value(samples, "klingrelay_channels", status="auto_disabled") == 1
    assert value(samples, "klingrelay_channels", status="disabled") == 0
    assert value(samples, "klingrelay_consumer_callbacks_pending") == 1


def test_scrape_still_answers_when_the_database_is_down(client, db):
    def database_down(execute, sql, params, many, context):
        raise OperationalError("server has gone away")

    with connection.execute_wrapper(database_down):
        samples = scrape(client)

    assert value(samples, "klingrelay_database_up") == 0
    assert ("klingrelay_tasks_stuck", frozenset()) not in samples


# --- several gunicorn workers ---------------------------------------------------------

# What one worker process does: count two requests, in its own file of the shared dir.
WORKER = (
    "from klingrelay.metrics import observe_http_request\n"
    "for _ in range(2):\n"
    "    observe_http_request(route='/probe', method='GET', status=200, seconds=0.01)\n"
)


def test_multiprocess_mode_adds_up_the_workers_and_reads_the_database_once(
    client, db, tmp_path, monkeypatch
):
    for _ in range(2):  # two worker processes, each writing its own files
        subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", WORKER],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            cwd=django_settings.BASE_DIR,
            check=True,
            timeout=60,
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    samples = scrape(client)
    text = client.get("/metrics").content.decode()

    probe = {"route": "/probe", "method": "GET"}
    assert value(samples, "klingrelay_http_requests_total", status="200", **probe) == 4
    assert value(samples, "klingrelay_http_request_duration_seconds_count", **probe) == 4
    # The database gauges come once per scrape, not once per worker.
    assert text.count("\nklingrelay_tasks_stuck ") == 1
