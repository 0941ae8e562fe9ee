"""Forwarding task updates to the consumer's own callback_url: durable, signed, retried."""

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
import responses
from django.core.management import call_command
from django.utils import timezone

from billing.models import ApiKey
from tests.kling_fakes import task_object
from videos.consumer_callbacks import deliver, enqueue_due_deliveries
from videos.models import CallbackDelivery, VideoTask
from videos.services import callback_token

pytestmark = pytest.mark.usefixtures("channel", "prices")
HOOK = "https://consumer.test/hook"


@pytest.fixture
def key_and_client(account, client_for):
    api_key, raw = ApiKey.issue(account, name="hooks")
    return api_key, client_for(raw)


@pytest.fixture
def task_with_hook(key_and_client, settings) -> VideoTask:
    settings.SERVER_ADDRESS = "https://relay.test"
    with responses.RequestsMock() as mock:
        mock.add_callback(
            responses.POST,
            "https://kling.test/v1/videos/text2video",
            callback=lambda request: (
                200,
                {},
                json.dumps(
                    {
                        "code": 0,
                        "message": "SUCCEED",
                        "request_id": "r",
                        "data": {
                            "task_id": "K1",
                            "task_status": "submitted",
                            "task_info": {
                                "external_task_id": json.loads(request.body)["external_task_id"]
                            },
                        },
                    }
                ),
            ),
        )
        key_and_client[1].post(
            "/kling/v1/videos/text2video",
            {"prompt": "p", "callback_url": HOOK, "external_task_id": "mine-1"},
            format="json",
        )
    return VideoTask.objects.get()


@pytest.fixture
def kling_calls_back(client, django_capture_on_commit_callbacks):
    """Kling posts a status change; the relay's after-commit work (enqueueing) runs."""

    def post(task: VideoTask, status: str) -> None:
        body = json.dumps(task_object("K1", str(task.pk), status)).encode()
        with django_capture_on_commit_callbacks(execute=True):
            client.generic(
                "POST",
                f"/kling/internal/callback?token={callback_token(task.pk)}",
                body,
                content_type="application/json",
            )

    return post


def verify_signature(header: str, body: bytes, secret: str) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(parts["v1"], expected.hexdigest())


@responses.activate
@pytest.mark.django_db(transaction=True)  # the worker runs real transactions of its own
def test_update_is_delivered_signed_with_the_consumers_external_id(
    kling_calls_back, task_with_hook, key_and_client
):
    responses.add(responses.POST, HOOK, status=200)
    kling_calls_back(task_with_hook, "succeed")

    delivery = CallbackDelivery.objects.get()
    assert delivery.task_status == "succeed" and delivery.state == "pending"
    call_command("db_worker", "--batch", "--no-startup-delay", verbosity=0)

    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 1
    request = responses.calls[0].request
    sent = json.loads(request.body)
    assert sent["task_id"] == "K1" and sent["task_status"] == "succeed"
    assert sent["task_info"] == {"external_task_id": "mine-1"}
    assert sent["task_result"]["videos"][0]["url"] == "https://cdn.test/K1.mp4"
    assert verify_signature(
        request.headers["X-Relay-Signature"], request.body, key_and_client[0].webhook_secret
    )


@responses.activate
def test_each_status_change_is_forwarded_once(kling_calls_back, task_with_hook):
    kling_calls_back(task_with_hook, "processing")
    kling_calls_back(task_with_hook, "processing")
    kling_calls_back(task_with_hook, "succeed")
    kling_calls_back(task_with_hook, "succeed")
    assert list(CallbackDelivery.objects.values_list("task_status", flat=True)) == [
        "processing",
        "succeed",
    ]


@responses.activate
def test_failed_delivery_is_retried_with_backoff_then_delivered(kling_calls_back, task_with_hook):
    responses.add(responses.POST, HOOK, status=500)
    responses.add(responses.POST, HOOK, status=204)
    kling_calls_back(task_with_hook, "succeed")
    delivery = CallbackDelivery.objects.get()

    before = timezone.now()
    assert deliver(delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.last_status_code == 500
    assert timedelta(seconds=14) <= delivery.next_attempt_at - before <= timedelta(seconds=16)
    assert deliver(delivery.pk) == "pending"  # not due yet: nothing is sent
    assert len(responses.calls) == 1

    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert enqueue_due_deliveries() == 1
    assert deliver(delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.last_status_code == 204


@responses.activate
def test_delivery_gives_up_after_the_backoff_window(kling_calls_back, task_with_hook, settings):
    responses.add(responses.POST, HOOK, status=503)
    kling_calls_back(task_with_hook, "failed")
    delivery = CallbackDelivery.objects.get()
    CallbackDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - timedelta(hours=25, minutes=1)
    )
    assert deliver(delivery.pk) == "gave_up"
    assert deliver(delivery.pk) == "gave_up"
    assert len(responses.calls) == 1


def test_backoff_covers_at_least_a_day(settings):
    from videos.consumer_callbacks import retry_delay

    total, attempts = 0.0, 0
    while total < settings.CONSUMER_CALLBACK_GIVE_UP_AFTER:
        attempts += 1
        total += retry_delay(attempts)
    assert total >= 24 * 3600 and retry_delay(1) == 15 and retry_delay(30) == 3600


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8000/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://consumer.test/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_or_odd_callback_urls_are_refused_at_submit(api, url, account):
    response = api.post(
        "/kling/v1/videos/text2video", {"prompt": "p", "callback_url": url}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("callback_url:")
    assert not VideoTask.objects.exists()


def test_operator_can_allow_private_hosts(api, settings):
    settings.CONSUMER_CALLBACK_ALLOWED_HOSTS = ["10.1.2.3"]
    with responses.RequestsMock() as mock:
        mock.add(
            responses.POST,
            "https://kling.test/v1/videos/text2video",
            json={
                "code": 0,
                "message": "SUCCEED",
                "request_id": "r",
                "data": {"task_id": "K9", "task_status": "submitted", "task_info": {}},
            },
        )
        response = api.post(
            "/kling/v1/videos/text2video",
            {"prompt": "p", "callback_url": "http://10.1.2.3/hook"},
            format="json",
        )
    assert response.status_code == 200
