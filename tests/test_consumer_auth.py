"""Kling-style credentials: a consumer's AK/SK signs a JWT exactly as for Kling."""

import time

import jwt
import pytest
from rest_framework.test import APIClient

from billing.models import ApiKey
from tests.test_errors_and_auth import assert_kling_error


@pytest.fixture
def key_pair(account) -> ApiKey:
    return ApiKey.issue(account, name="sdk")[0]


def kling_jwt(access_key: str, secret_key: str, **overrides) -> str:
    now = int(time.time())
    claims = {"iss": access_key, "exp": now + 1800, "nbf": now - 5} | overrides
    return jwt.encode(claims, secret_key, algorithm="HS256", headers={"typ": "JWT"})


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_kling_jwt_from_consumer_keys_authenticates(key_pair):
    assert key_pair.access_key.startswith("AK") and len(key_pair.secret_key) == 64
    client = bearer(kling_jwt(key_pair.access_key, key_pair.secret_key))
    # An authenticated consumer asking for an unknown task gets Kling's not-found.
    assert_kling_error(client.get("/kling/v1/videos/text2video/123"), 404, 1203)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"exp": int(time.time()) - 60}, 1004),
        ({"nbf": int(time.time()) + 600}, 1003),
    ],
)
def test_expired_and_not_yet_valid_tokens_get_klings_codes(key_pair, overrides, code):
    token = kling_jwt(key_pair.access_key, key_pair.secret_key, **overrides)
    assert_kling_error(bearer(token).get("/kling/v1/videos/text2video/1"), 401, code)


def test_badly_signed_unknown_and_garbled_tokens_are_refused(key_pair):
    for token in (
        kling_jwt(key_pair.access_key, "not-the-secret-0123456789abcdef0123"),
        kling_jwt("AKunknown", key_pair.secret_key),
        "abc.def.ghi",
        jwt.encode({"exp": int(time.time()) + 60}, key_pair.secret_key, algorithm="HS256"),
    ):
        assert_kling_error(bearer(token).get("/kling/v1/videos/text2video/1"), 401, 1002)


def test_revoked_key_pair_stops_working(key_pair):
    key_pair.revoke()
    token = kling_jwt(key_pair.access_key, key_pair.secret_key)
    assert_kling_error(bearer(token).get("/kling/v1/videos/text2video/1"), 401, 1002)


def test_none_algorithm_is_refused(key_pair):
    token = jwt.encode(
        {"iss": key_pair.access_key, "exp": int(time.time()) + 60}, None, algorithm="none"
    )
    assert_kling_error(bearer(token).get("/kling/v1/videos/text2video/1"), 401, 1002)
