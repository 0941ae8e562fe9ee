"""Property-based fuzzing of the relay's own API, driven by its OpenAPI schema.

schemathesis takes the schema the relay serves at /api/schema/ and sends every operation
valid and invalid requests generated from it, over real HTTP, to a live relay
(transactional database) whose only channel is the in-process Kling simulator. Every
answer must be no 5xx, a status code the schema lists, JSON, and a body that matches the
schema for that status.

The schema is fetched from the relay in-process when the module is collected, so that
schemathesis makes one test per operation; its fixture loader (`from_fixture`), which would
fetch it from the live server, reads `Node._nodeid`, gone in pytest 9.2.
test_the_live_relay_serves_the_fuzzed_schema checks the live server serves the same one.

Bounded for CI: a fixed seed, at most FUZZ_EXAMPLES fuzzed cases per operation (plus
schemathesis' coverage cases), no example database.
"""

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing.models import ApiKey, Price
from channels_app.models import Channel
from tests.conftest import make_consumer
from tests.kling_fakes import accept_submit
from videos.models import VideoTask
from videos.simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, KlingSimulator
from videos.validation import LIP_SYNC_PRICE_MODEL

FUZZ_EXAMPLES = 40
FUZZ_SEED = 20261124
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
PRICED_MODELS = ("kling-v1", "kling-v1-6", "kling-v2-master", "kling-video-o1")


@pytest.fixture
def simulator() -> Iterator[KlingSimulator]:
    with KlingSimulator(speed=50) as sim:
        yield sim


@pytest.fixture
def relay_key(transactional_db, simulator, settings) -> str:
    """A consumer with plenty of quota, prices for every model/mode/duration a generated
    body can name, and one channel: the simulator."""
    # No callbacks from the simulator: the fuzz drives the callback endpoint itself, and
    # nothing else writes to the database while it runs, so every run is the same.
    settings.SERVER_ADDRESS = ""
    account = make_consumer("fuzz", quota=10**12)
    models = (*PRICED_MODELS, LIP_SYNC_PRICE_MODEL)
    durations = [str(seconds) for seconds in range(3, 11)]
    Price.objects.bulk_create(
        Price(model_name=model, mode=mode, duration=duration, quota=100)
        for model, mode, duration in itertools.product(models, ("std", "pro"), durations)
    )
    Channel.objects.create(
        name="simulator", key=f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}", base_url=simulator.url
    )
    return ApiKey.issue(account, name="fuzz")[1]


def _served_schema() -> dict[str, Any]:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200, response.content
    return response.json()


schema = schemathesis.openapi.from_dict(
    _served_schema(),
    config=schemathesis.Config.from_dict(
        {
            "seed": FUZZ_SEED,
            "generation": {
                "mode": "all",  # valid requests and deliberately invalid ones
                "max-examples": FUZZ_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # The relay key is sent by the test; random credentials only make 401s.
                "with-security-parameters": False,
            },
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


@pytest.fixture
def auth_header(relay_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {relay_key}"}


@schema.parametrize()
@settings(
    deadline=None,
    derandomize=True,
    database=None,
    # One relay (fixtures) per operation, shared by its examples: that is intended.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_operation_answers_as_its_schema_says(case, live_server, auth_header):
    case.call_and_validate(base_url=live_server.url, headers=auth_header, checks=CHECKS, timeout=30)


def test_the_live_relay_serves_the_fuzzed_schema(live_server):
    served = requests.get(f"{live_server.url}/api/schema/?format=json", timeout=10)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


# --- real tasks, so the answers about them are checked against the schema too -------------


def _wait_until_finished(live_server, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body = requests.get(
            f"{live_server.url}/kling/v1/videos/{task_id}", headers=headers, timeout=10
        ).json()
        if body["data"]["task_status"] in ("succeed", "failed") or time.monotonic() > deadline:
            return body["data"]
        time.sleep(0.05)


def test_answers_about_real_tasks_match_the_schema(live_server, auth_header):
    def validated(method: str, path: str, url_path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(
            method, f"{live_server.url}{url_path}", headers=auth_header, timeout=30, **kwargs
        )
        schema[path][method].validate_response(response)
        return response

    submitted = validated(
        "POST",
        "/kling/v1/videos/text2video",
        "/kling/v1/videos/text2video",
        json={"prompt": "a lighthouse at dusk", "external_task_id": "fuzz-1", "x-new": [1]},
    )
    assert submitted.status_code == 200, submitted.content
    task_id = submitted.json()["data"]["task_id"]
    finished = _wait_until_finished(live_server, auth_header, task_id)
    assert finished["task_status"] == "succeed"
    video_id = finished["task_result"]["videos"][0]["id"]

    extended = validated(
        "POST",
        "/kling/v1/videos/video-extend",
        "/kling/v1/videos/video-extend",
        json={"video_id": video_id, "prompt": "and then the sun rises"},
    )
    assert extended.status_code == 200, extended.content
    extend_id = extended.json()["data"]["task_id"]
    parent = _wait_until_finished(live_server, auth_header, extend_id)["task_info"]["parent_video"]
    assert parent["id"] == video_id

    lip_sync = validated(
        "POST",
        "/kling/v1/videos/lip-sync",
        "/kling/v1/videos/lip-sync",
        json={"input": {"video_id": video_id, "mode": "text2video", "text": "hi", "voice_id": "v"}},
    )
    effects = validated(
        "POST",
        "/kling/v1/videos/effects",
        "/kling/v1/videos/effects",
        json={"effect_scene": "hug", "input": {"images": ["https://img.test/a.png"]}},
    )
    assert (lip_sync.status_code, effects.status_code) == (200, 200), (lip_sync, effects)

    for path, url_path in [
        ("/kling/v1/videos/{task_id}", f"/kling/v1/videos/{task_id}"),
        ("/kling/v1/videos/{task_id}", "/kling/v1/videos/fuzz-1"),
        ("/kling/v1/videos/{action}/{task_id}", f"/kling/v1/videos/text2video/{task_id}"),
        ("/kling/v1/videos/{action}/{task_id}", f"/kling/v1/videos/video-extend/{extend_id}"),
        ("/kling/v1/videos/text2video", "/kling/v1/videos/text2video?pageSize=5"),
        ("/kling/v1/videos/video-extend", "/kling/v1/videos/video-extend"),
    ]:
        assert validated("GET", path, url_path).status_code == 200, url_path

    batch = validated(
        "POST",
        "/kling/v1/videos/batch-query",
        "/kling/v1/videos/batch-query",
        json={"task_ids": [task_id, extend_id, "nope"]},
    )
    assert batch.json()["data"]["not_found"] == ["nope"]


# --- what fuzzing and probing around it found (each was a 500) ----------------------------


@pytest.fixture
def relay_api(client_for, raw_key, channel, prices) -> APIClient:
    client = client_for(raw_key)
    client.raise_request_exception = False  # a 500 must show as a response, not raise
    return client


@pytest.mark.parametrize("port", ["99999", "65536", "0"])
def test_callback_url_with_an_impossible_port_is_a_kling_400(relay_api, port):
    body = {"prompt": "x", "callback_url": f"https://consumer.test:{port}/hook"}
    response = relay_api.post("/kling/v1/videos/text2video", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == 1201 and "port" in response.json()["message"]


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for index in range(levels):
        value = {"a": value} if index % 2 else [value]
    return value


@pytest.mark.parametrize("levels", [32, 900])
def test_body_nested_deeper_than_mariadb_stores_is_a_kling_400(relay_api, levels):
    # MariaDB's JSON_VALID refuses more than 31 nested containers; Python's encoder
    # recursed out near 900. Both used to fail after validation, as a 500.
    body = {"prompt": "x", "extra": _nested(levels - 1)}
    response = relay_api.post("/kling/v1/videos/text2video", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == 1200


@responses.activate
def test_body_nested_as_deep_as_mariadb_stores_is_accepted(relay_api):
    accept_submit("text2video")
    body = {"prompt": "x", "extra": _nested(30)}  # 31 levels with the body itself
    response = relay_api.post("/kling/v1/videos/text2video", body, format="json")
    assert response.status_code == 200, response.content
    assert VideoTask.objects.get().request_body["extra"] == body["extra"]
