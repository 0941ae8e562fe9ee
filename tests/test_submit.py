"""POST /kling/v1/videos/<action>: validation, pricing, reservation, passthrough."""

import json
import time

import jwt
import pytest
import responses
from django.test import override_settings

from billing.models import Account
from tests.conftest import ACCESS_KEY, KLING_BASE, SECRET_KEY
from tests.kling_fakes import accept_submit, sent_body
from videos.models import VideoTask
from videos.services import callback_token

SUBMIT_BODIES = {
    "text2video": {"prompt": "a cat surfing", "model_name": "kling-v1", "duration": "5"},
    "image2video": {"image": "https://img.test/cat.png", "prompt": "wave"},
    "multi-image2video": {
        "image_list": [{"image": "https://img.test/1.png"}, {"image": "https://img.test/2.png"}],
        "prompt": "two cats",
        "model_name": "kling-v1-6",
    },
    "omni-video": {
        "prompt": "<<<image_1>>> dances",
        "model_name": "kling-video-o1",
        "duration": "5",
    },
}

pytestmark = pytest.mark.usefixtures("channel", "prices")


@responses.activate
@pytest.mark.parametrize("action", list(SUBMIT_BODIES))
def test_submit_passes_kling_answer_through_and_tracks_task(api, account, action):
    accept_submit(action)
    response = api.post(f"/kling/v1/videos/{action}", SUBMIT_BODIES[action], format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 0 and body["message"] == "SUCCEED"
    assert body["request_id"] == "kling-req-1"
    assert body["data"]["task_id"] == "781234567890123456"
    assert body["data"]["task_status"] == "submitted"
    assert body["data"]["created_at"] == 1722769557708
    # No consumer external id: Kling would not have shown one, so neither does the relay.
    assert "external_task_id" not in body["data"]["task_info"]

    task = VideoTask.objects.get()
    assert task.status == "submitted" and task.task_id == "781234567890123456"
    assert task.action == action and task.reserved_quota == 100
    assert sent_body()["external_task_id"] == str(task.pk)
    account.refresh_from_db()
    assert (account.quota, account.reserved) == (1000, 100)


@responses.activate
def test_consumer_external_id_and_callback_are_replaced_upstream_and_restored(api):
    accept_submit("text2video")
    body = dict(
        SUBMIT_BODIES["text2video"],
        external_task_id="my-job-7",
        callback_url="https://consumer.test/hook",
        camera_control={"type": "simple", "config": {"zoom": 5}},
    )
    with override_settings(SERVER_ADDRESS="https://relay.test"):
        response = api.post("/kling/v1/videos/text2video", body, format="json")

    task = VideoTask.objects.get()
    upstream = sent_body()
    assert upstream["external_task_id"] == str(task.pk)
    assert upstream["callback_url"] == (
        f"https://relay.test/kling/internal/callback?token={callback_token(task.pk)}"
    )
    assert upstream["camera_control"] == {"type": "simple", "config": {"zoom": 5}}
    assert upstream["prompt"] == body["prompt"]
    assert response.json()["data"]["task_info"] == {"external_task_id": "my-job-7"}
    assert task.consumer_external_task_id == "my-job-7"
    assert task.consumer_callback_url == "https://consumer.test/hook"


@responses.activate
def test_without_server_address_no_callback_url_is_sent(api):
    accept_submit("text2video")
    body = dict(SUBMIT_BODIES["text2video"], callback_url="https://consumer.test/hook")
    with override_settings(SERVER_ADDRESS=""):
        api.post("/kling/v1/videos/text2video", body, format="json")
    assert "callback_url" not in sent_body()


@responses.activate
def test_upstream_call_carries_a_valid_kling_jwt(api):
    accept_submit("text2video")
    api.post("/kling/v1/videos/text2video", SUBMIT_BODIES["text2video"], format="json")

    header = responses.calls[0].request.headers["Authorization"]
    scheme, token = header.split(" ")
    assert scheme == "Bearer"
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, SECRET_KEY, algorithms=["HS256"])
    now = time.time()
    assert claims["iss"] == ACCESS_KEY
    assert now + 1790 <= claims["exp"] <= now + 1801
    assert now - 7 <= claims["nbf"] <= now - 4


@responses.activate
def test_kling_refusal_is_passed_through_fails_task_and_releases_quota(api, account):
    refusal = {
        "code": 1301,
        "message": "content security policy triggered",
        "request_id": "kling-req-9",
    }
    responses.add(responses.POST, f"{KLING_BASE}/v1/videos/text2video", json=refusal, status=400)

    response = api.post("/kling/v1/videos/text2video", SUBMIT_BODIES["text2video"], format="json")

    assert response.status_code == 400
    assert response.json() == refusal
    assert len(responses.calls) == 1  # the consumer's error: no failover
    task = VideoTask.objects.get()
    assert task.status == "failed" and "1301" in task.failure_reason
    account.refresh_from_db()
    assert (account.quota, account.reserved) == (1000, 0)


@responses.activate
def test_insufficient_quota_is_refused_before_kling_is_called(client_for):
    from billing.models import ApiKey
    from tests.conftest import make_consumer

    poor = make_consumer("bob", quota=50)
    client = client_for(ApiKey.issue(poor)[1])

    response = client.post(
        "/kling/v1/videos/text2video", SUBMIT_BODIES["text2video"], format="json"
    )

    assert response.status_code == 429
    body = response.json()
    assert body["code"] == 1101 and "costs 100" in body["message"] and body["request_id"]
    assert len(responses.calls) == 0
    assert not VideoTask.objects.exists()
    poor.refresh_from_db()
    assert poor.reserved == 0


@responses.activate
def test_request_without_price_is_refused_not_served_free(api):
    response = api.post(
        "/kling/v1/videos/text2video",
        {"prompt": "x", "model_name": "kling-v9-unknown"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == 1201
    assert "no price" in response.json()["message"]
    assert len(responses.calls) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "x" * 2501}, "prompt"),
        ({"prompt": "ok", "mode": "ultra"}, "mode"),
        ({"prompt": "ok", "duration": "7"}, "duration"),
        ({"prompt": "ok", "cfg_scale": 2}, "cfg_scale"),
        ({"prompt": "ok", "aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"prompt": "ok", "callback_url": "not a url"}, "callback_url"),
    ],
)
def test_invalid_text2video_body_names_the_field(api, body, field):
    response = api.post("/kling/v1/videos/text2video", body, format="json")
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == 1201
    assert payload["message"].startswith(f"{field}:")
    assert not VideoTask.objects.exists()


def test_multi_image_list_size_is_checked(api):
    images = [{"image": f"https://img.test/{i}.png"} for i in range(5)]
    response = api.post(
        "/kling/v1/videos/multi-image2video", {"image_list": images, "prompt": "x"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("image_list:")


def test_image2video_needs_an_image(api):
    response = api.post("/kling/v1/videos/image2video", {"prompt": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["message"].startswith("image:")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"prompt": NaN}', "NaN is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"prompt": "\\ud800"}', "not valid Unicode"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "JSON object"),
    ],
)
def test_malformed_body_gets_kling_parameter_error(api, raw, message):
    response = api.generic(
        "POST", "/kling/v1/videos/text2video", raw, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == 1200
    assert message in response.json()["message"]


def test_body_over_the_limit_is_refused(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    raw = json.dumps({"prompt": "x", "image": "A" * 5000}).encode()
    response = api.generic(
        "POST", "/kling/v1/videos/image2video", raw, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == 1200
    assert "larger" in response.json()["message"]


@responses.activate
def test_no_enabled_channel_for_model_is_a_clear_error(api, channel, account):
    channel.model_names = "kling-v2-master"
    channel.save()
    response = api.post("/kling/v1/videos/text2video", SUBMIT_BODIES["text2video"], format="json")
    assert response.status_code == 403
    assert response.json()["code"] == 1103
    assert "kling-v1" in response.json()["message"]
    account.refresh_from_db()
    assert account.reserved == 0


@responses.activate
def test_quota_reservation_uses_the_most_specific_price(api, account):
    from billing.models import Price

    Price.objects.create(
        model_name="kling-v1", mode="std", duration="5", action="text2video", quota=120
    )
    accept_submit("text2video")
    api.post("/kling/v1/videos/text2video", SUBMIT_BODIES["text2video"], format="json")
    assert VideoTask.objects.get().reserved_quota == 120
    assert Account.objects.get(pk=account.pk).reserved == 120


@responses.activate
def test_external_task_id_is_unique_per_consumer_unless_kling_never_accepted_it(api):
    refusal = {"code": 1301, "message": "content policy", "request_id": "r"}
    responses.add(responses.POST, f"{KLING_BASE}/v1/videos/text2video", json=refusal, status=400)
    body = dict(SUBMIT_BODIES["text2video"], external_task_id="order-1")
    assert api.post("/kling/v1/videos/text2video", body, format="json").status_code == 400

    responses.reset()
    accept_submit("text2video")
    assert api.post("/kling/v1/videos/text2video", body, format="json").status_code == 200

    again = api.post("/kling/v1/videos/text2video", body, format="json")
    assert again.status_code == 400
    assert again.json()["message"] == "external_task_id: 'order-1' is already used by another task"


@responses.activate
def test_a_task_id_kling_already_gave_another_task_is_not_a_500(api, account):
    accept_submit("text2video", task_id="SAME")
    assert (
        api.post("/kling/v1/videos/text2video", {"prompt": "a"}, format="json").status_code == 200
    )
    response = api.post("/kling/v1/videos/text2video", {"prompt": "b"}, format="json")
    assert response.status_code == 200  # Kling's answer, as Kling sent it
    first, second = VideoTask.objects.order_by("id")
    assert first.task_id == "SAME" and second.task_id is None
    assert second.status == "submitted"
