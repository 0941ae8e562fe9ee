"""Every error the relay raises speaks Kling's envelope, never HTML or a bare 500."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import ApiKey


def assert_kling_error(response, status: int, code: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["code"] == code and body["message"] and len(body["request_id"]) == 36
    return body


def test_missing_authorization_is_1001(db):
    response = APIClient().post("/kling/v1/videos/text2video", {"prompt": "x"}, format="json")
    assert_kling_error(response, 401, 1001)


@pytest.mark.parametrize("header", ["Bearer nope", "Basic abc", "Bearer", "Token a b"])
def test_bad_authorization_is_401(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_kling_error(client.get("/kling/v1/videos/123"), 401, 1002)


def test_revoked_and_expired_keys_are_refused(account, client_for):
    revoked, revoked_raw = ApiKey.issue(account)
    revoked.revoke()
    expired_raw = ApiKey.issue(account, expires_at=timezone.now() - timedelta(seconds=1))[1]
    for raw in (revoked_raw, expired_raw):
        assert_kling_error(client_for(raw).get("/kling/v1/videos/123"), 401, 1002)


def test_unknown_kling_route_is_a_kling_404(api):
    assert_kling_error(api.get("/kling/v1/images/generations"), 404, 1202)
    assert_kling_error(api.post("/kling/v1/videos/not-an-action", {}, format="json"), 404, 1202)
    assert_kling_error(api.get("/kling/v1/videos/nope/123"), 404, 1202)


def test_wrong_method_is_a_kling_error(api):
    assert_kling_error(api.delete("/kling/v1/videos/text2video"), 404, 1202)


def test_unexpected_failure_is_a_kling_500(api, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("videos.services.validate_submit_body", explode)
    client = api
    client.raise_request_exception = False
    body = assert_kling_error(
        client.post("/kling/v1/videos/text2video", {"prompt": "x"}, format="json"), 500, 5000
    )
    assert "boom" not in body["message"]


def test_request_id_header_matches_error_body(db):
    response = APIClient().get("/kling/v1/videos/1")
    assert response["X-Request-Id"] == response.json()["request_id"]


def test_revoking_a_key_takes_effect_within_the_cache_time(account, client_for, settings):
    import time

    settings.API_KEY_CACHE_SECONDS = 0.3
    api_key, raw = ApiKey.issue(account)
    client = client_for(raw)
    assert client.get("/kling/v1/videos/123").status_code == 404  # authenticated
    api_key.revoke()
    assert client.get("/kling/v1/videos/123").status_code == 404  # still cached
    time.sleep(0.35)
    assert_kling_error(client.get("/kling/v1/videos/123"), 401, 1002)


def test_without_the_key_cache_revocation_is_immediate(account, client_for, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    api_key, raw = ApiKey.issue(account)
    client = client_for(raw)
    assert client.get("/kling/v1/videos/123").status_code == 404
    api_key.revoke()
    assert_kling_error(client.get("/kling/v1/videos/123"), 401, 1002)
