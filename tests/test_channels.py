"""Channels: key parsing, Kling JWTs, routing and failover at submit."""

import time

import jwt
import pytest
import requests
import responses
from django.core.exceptions import ValidationError

from billing.models import Account
from channels_app.credentials import KlingCredential, kling_token, parse_channel_keys
from channels_app.models import Channel
from tests.kling_fakes import accept_submit
from videos.models import VideoTask

BODY = {"prompt": "a cat", "model_name": "kling-v1"}


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("no-separator", "exactly one '|'"),
        ("a|b|c", "exactly one '|'"),
        ("|secret", "access key (before '|') is empty"),
        ("access|", "secret key (after '|') is empty"),
        ("   \n  ", "at least one key"),
    ],
)
def test_malformed_key_is_refused_with_a_clear_message(key, message):
    with pytest.raises(ValidationError) as raised:
        parse_channel_keys(key)
    assert message in " ".join(raised.value.messages)
    assert "secret" not in " ".join(raised.value.messages).replace("secret key", "")


def test_several_keys_one_per_line():
    keys = parse_channel_keys("ak1|sk1\n\n ak2 | sk2 \n")
    assert [(k.access_key, k.secret_key) for k in keys] == [("ak1", "sk1"), ("ak2", "sk2")]


def test_channel_with_malformed_key_cannot_be_saved(db):
    with pytest.raises(ValidationError):
        Channel.objects.create(name="bad", key="nope")
    assert not Channel.objects.exists()


def test_token_is_reused_until_close_to_expiry(settings):
    credential = KlingCredential("ak-reuse", "sk-reuse-0123456789abcdef0123456789")
    first = kling_token(credential)
    assert kling_token(credential) == first
    settings.KLING_TOKEN_RENEW_BEFORE = settings.KLING_TOKEN_TTL + 1
    time.sleep(1.01)  # tokens have whole-second claims
    renewed = kling_token(credential)
    assert renewed != first
    assert jwt.decode(renewed, credential.secret_key, algorithms=["HS256"])["iss"] == "ak-reuse"


def test_secret_never_in_repr():
    assert "sk-hidden" not in repr(KlingCredential("ak", "sk-hidden"))


def _channel(name: str, base: str, **fields) -> Channel:
    return Channel.objects.create(
        name=name, key=f"{name}-ak|{name}-sk-0123456789abcdef0123456789", base_url=base, **fields
    )


@pytest.fixture
def two_channels(db, prices):
    first = _channel("first", "https://first.test", priority=10)
    second = _channel("second", "https://second.test", priority=5)
    return first, second


@responses.activate
def test_higher_priority_channel_is_used(api, two_channels):
    accept_submit("text2video", base="https://first.test")
    assert api.post("/kling/v1/videos/text2video", BODY, format="json").status_code == 200
    assert VideoTask.objects.get().channel == two_channels[0]


@responses.activate
@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500, "json": {"code": 5000, "message": "server error", "request_id": "r"}},
        {"status": 429, "json": {"code": 1303, "message": "concurrency", "request_id": "r"}},
        {"body": requests.ConnectTimeout("timeout")},
    ],
)
def test_transient_failure_fails_over_to_the_next_channel(api, two_channels, account, failure):
    first, second = two_channels
    responses.add(responses.POST, "https://first.test/v1/videos/text2video", **failure)
    accept_submit("text2video", base="https://second.test")

    response = api.post("/kling/v1/videos/text2video", BODY, format="json")

    assert response.status_code == 200
    task = VideoTask.objects.get()
    assert task.channel == second and task.status == "submitted"
    assert task.channels_tried == [first.pk, second.pk]
    first.refresh_from_db()
    assert first.is_enabled and first.failure_count == 1


@responses.activate
def test_account_in_arrears_disables_the_channel_and_fails_over(api, two_channels):
    first, _ = two_channels
    responses.add(
        responses.POST,
        "https://first.test/v1/videos/text2video",
        status=429,
        json={"code": 1101, "message": "account arrears", "request_id": "r"},
    )
    accept_submit("text2video", base="https://second.test")

    assert api.post("/kling/v1/videos/text2video", BODY, format="json").status_code == 200
    first.refresh_from_db()
    assert first.status == Channel.Status.AUTO_DISABLED
    assert "1101" in first.disabled_reason and first.disabled_at is not None


@responses.activate
def test_all_channels_down_is_a_kling_style_5xx_and_releases_quota(api, two_channels, account):
    for base in ("https://first.test", "https://second.test"):
        responses.add(
            responses.POST, f"{base}/v1/videos/text2video", body=requests.ConnectionError("refused")
        )

    response = api.post("/kling/v1/videos/text2video", BODY, format="json")

    assert response.status_code == 503
    assert response.json()["code"] == 5001 and response.json()["request_id"]
    task = VideoTask.objects.get()
    assert task.status == "failed" and "No channel accepted" in task.failure_reason
    account = Account.objects.get(pk=account.pk)
    assert (account.quota, account.reserved) == (1000, 0)


@responses.activate
def test_last_kling_overload_answer_is_passed_through_when_all_fail(api, two_channels):
    for base in ("https://first.test", "https://second.test"):
        responses.add(
            responses.POST,
            f"{base}/v1/videos/text2video",
            status=429,
            json={"code": 1302, "message": "rate limit", "request_id": "r2"},
        )
    response = api.post("/kling/v1/videos/text2video", BODY, format="json")
    assert response.status_code == 429 and response.json()["code"] == 1302


@responses.activate
def test_parameter_error_from_kling_neither_fails_over_nor_disables(api, two_channels):
    first, _ = two_channels
    responses.add(
        responses.POST,
        "https://first.test/v1/videos/text2video",
        status=400,
        json={"code": 1201, "message": "prompt invalid", "request_id": "r"},
    )
    response = api.post("/kling/v1/videos/text2video", BODY, format="json")
    assert response.status_code == 400 and len(responses.calls) == 1
    first.refresh_from_db()
    assert first.is_enabled


@responses.activate
def test_keys_of_a_channel_are_used_in_turn(api, db, prices):
    channel = Channel.objects.create(
        name="multi",
        base_url="https://multi.test",
        key="ak-one|sk-one-0123456789abcdef0123456789\nak-two|sk-two-0123456789abcdef0123456789",
    )
    responses.add(
        responses.POST,
        "https://multi.test/v1/videos/text2video",
        status=400,
        json={"code": 1201, "message": "x", "request_id": "r"},
    )
    for _ in range(4):
        api.post("/kling/v1/videos/text2video", BODY, format="json")
    issuers = [
        jwt.decode(call.request.headers["Authorization"][7:], options={"verify_signature": False})[
            "iss"
        ]
        for call in responses.calls
    ]
    assert sorted(issuers) == ["ak-one", "ak-one", "ak-two", "ak-two"]
    assert issuers[0] != issuers[1]
    assert channel.pk


@responses.activate
def test_admin_test_action_re_enables_a_channel_that_passes(admin_client, channel):
    channel.disable_automatically("Kling answered HTTP 429 code 1101: arrears")
    responses.add(
        responses.GET,
        "https://kling.test/v1/videos/text2video",
        json={"code": 0, "message": "SUCCEED", "request_id": "r", "data": []},
    )

    response = admin_client.post(
        "/admin/channels_app/channel/",
        {"action": "test_and_enable", "_selected_action": [channel.pk]},
        follow=True,
    )

    assert "test passed and re-enabled" in response.content.decode()
    channel.refresh_from_db()
    assert channel.is_enabled and channel.disabled_reason == ""
    assert responses.calls[0].request.params == {"pageNum": "1", "pageSize": "1"}


@responses.activate
def test_admin_test_action_keeps_a_failing_channel_disabled(admin_client, channel):
    channel.disable_automatically("arrears")
    responses.add(
        responses.GET,
        "https://kling.test/v1/videos/text2video",
        status=429,
        json={"code": 1102, "message": "resource pack exhausted", "request_id": "r"},
    )

    response = admin_client.post(
        "/admin/channels_app/channel/",
        {"action": "test_and_enable", "_selected_action": [channel.pk]},
        follow=True,
    )

    assert "test failed" in response.content.decode()
    channel.refresh_from_db()
    assert channel.status == Channel.Status.AUTO_DISABLED


@responses.activate
def test_test_channel_command(channel):
    from io import StringIO

    from django.core.management import CommandError, call_command

    responses.add(
        responses.GET,
        "https://kling.test/v1/videos/text2video",
        status=401,
        json={"code": 1002, "message": "auth failed", "request_id": "r"},
    )
    with pytest.raises(CommandError, match="code 1002"):
        call_command("test_channel", "primary")
    responses.replace(
        responses.GET,
        "https://kling.test/v1/videos/text2video",
        json={"code": 0, "message": "SUCCEED", "request_id": "r", "data": []},
    )
    out = StringIO()
    call_command("test_channel", "primary", stdout=out)
    assert "test passed" in out.getvalue()


@responses.activate
def test_success_without_a_task_id_is_not_trusted(api, two_channels):
    _, second = two_channels
    responses.add(
        responses.POST,
        "https://first.test/v1/videos/text2video",
        json={"code": 0, "message": "SUCCEED", "request_id": "r", "data": {}},
    )
    accept_submit("text2video", base="https://second.test")
    assert api.post("/kling/v1/videos/text2video", BODY, format="json").status_code == 200
    assert VideoTask.objects.get().channel == second
