"""Structured logs: one JSON access line per API request, every line JSON, no secret."""

import io
import json
import logging
import os
import subprocess
import sys

import pytest
import responses
from django.conf import settings as django_settings

from billing.models import ApiKey
from klingrelay.logging import JsonFormatter
from tests.conftest import SECRET_KEY
from tests.kling_fakes import accept_submit, task_object
from videos import services
from videos.models import VideoTask
from videos.services import callback_token

pytestmark = pytest.mark.usefixtures("prices")

TASK_ID = "781234567890123456"


@pytest.fixture
def json_logs():
    """Every log line of the test, formatted as LOG_FORMAT=json formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def access_lines(stream: io.StringIO) -> list[dict]:
    return [line for line in lines(stream) if line["logger"] == "klingrelay.access"]


@responses.activate
def test_submit_logs_one_json_access_line_with_what_the_request_did(
    account, channel, client_for, json_logs
):
    api_key, raw_key = ApiKey.issue(account, name="logged")
    accept_submit("text2video", TASK_ID)

    response = client_for(raw_key).post(
        "/kling/v1/videos/text2video", {"prompt": "a cat"}, format="json"
    )

    assert response.status_code == 200
    (line,) = access_lines(json_logs)
    assert line["level"] == "INFO" and line["time"].endswith("+00:00")
    assert line["request_id"] == response["X-Request-Id"]
    assert line["method"] == "POST"
    assert line["path"] == "/kling/v1/videos/text2video"
    assert line["route"].startswith("/kling/v1/videos/")
    assert line["status"] == 200
    assert line["duration_ms"] >= 0
    assert line["key_prefix"] == api_key.prefix and raw_key.startswith(api_key.prefix)
    assert line["channel_id"] == channel.pk
    assert line["task_id"] == TASK_ID
    assert line["upstream_status"] == 200
    assert line["upstream_ms"] >= 0 and line["upstream_calls"] == 1


@responses.activate
def test_logs_hold_no_key_secret_or_callback_token(account, channel, client, client_for, json_logs):
    api_key, raw_key = ApiKey.issue(account, name="logged")
    accept_submit("text2video", TASK_ID)
    client_for(raw_key).post("/kling/v1/videos/text2video", {"prompt": "a cat"}, format="json")
    task = VideoTask.objects.get()
    token = callback_token(task.pk)
    client.generic(
        "POST",
        f"/kling/internal/callback?token={token}",
        json.dumps(task_object(TASK_ID, str(task.pk), "succeed")).encode(),
        content_type="application/json",
    )
    client_for("kr-not-a-real-key-but-secret-looking").get(f"/kling/v1/videos/{TASK_ID}")

    text = json_logs.getvalue()
    callback_line = next(
        line for line in access_lines(json_logs) if line["path"] == "/kling/internal/callback"
    )
    assert callback_line["task_id"] == TASK_ID and callback_line["status"] == 200
    assert callback_line["key_prefix"] is None  # Kling is not a consumer
    for secret in (
        raw_key,
        api_key.secret_key,
        api_key.webhook_secret,
        SECRET_KEY,  # the channel's Kling secret key
        token,
        "kr-not-a-real-key-but-secret-looking",
    ):
        assert secret not in text


def test_unhandled_error_is_one_json_line_with_the_request_id(api, channel, json_logs, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "submit_task", broken)

    response = api.post("/kling/v1/videos/text2video", {"prompt": "a cat"}, format="json")

    assert response.status_code == 500
    request_id = response.json()["request_id"]
    error = next(line for line in lines(json_logs) if line["level"] == "ERROR")
    # The existing message keeps its request_id=…; the field comes with it.
    assert f"request_id={request_id}" in error["message"]
    assert error["request_id"] == request_id
    assert "RuntimeError: boom" in error["exception"]
    assert access_lines(json_logs)[0]["status"] == 500


def test_probes_and_static_files_are_not_logged(client, db, json_logs):
    client.get("/healthz")
    client.get("/metrics")
    client.get("/static/admin/css/no-such-file.css")

    assert access_lines(json_logs) == []


def run_with_log_format(log_format: str) -> subprocess.CompletedProcess:
    script = (
        "import logging, django\n"
        "django.setup()\n"
        "logging.getLogger('videos.services').warning('task %s failed', 7)\n"
    )
    return subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "klingrelay.settings",
            "LOG_FORMAT": log_format,
        },
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_format_json_makes_every_line_json():
    result = run_with_log_format("json")

    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "WARNING"
    assert line["logger"] == "videos.services"
    assert line["message"] == "task 7 failed"


def test_log_format_defaults_to_plain_lines():
    result = run_with_log_format("")

    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("WARNING videos.services task 7 failed")
