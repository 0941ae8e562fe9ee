"""An SDK-style client written only against Kling's documentation drives the relay.

It signs its own JWT from an access key and secret key (HS256, iss, exp, nbf, reused
until close to expiry, as Kling's clients do), submits, and polls Kling's own query path
until the task is done. Only its base URL and keys differ from a client for Kling. The
relay runs as live_server with the Kling simulator behind it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from billing.models import ApiKey, LedgerEntry, Price
from channels_app.models import Channel
from tests.conftest import make_consumer
from videos.simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, KlingSimulator

pytestmark = pytest.mark.django_db(transaction=True)


class KlingClient:
    """What a Kling SDK does, from Kling's documentation alone."""

    def __init__(self, base_url: str, access_key: str, secret_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.access_key = access_key
        self.secret_key = secret_key
        self._token: tuple[str, float] | None = None
        self.http = requests.Session()
        self.http.trust_env = False

    def _authorization(self) -> str:
        now = time.time()
        if self._token is None or self._token[1] - now < 300:
            claims = {"iss": self.access_key, "exp": int(now) + 1800, "nbf": int(now) - 5}
            token = jwt.encode(
                claims, self.secret_key, algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"}
            )
            self._token = (token, now + 1800)
        return f"Bearer {self._token[0]}"

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(
            method,
            f"{self.base_url}{path}",
            timeout=30,
            headers={"Authorization": self._authorization(), "Content-Type": "application/json"},
            **kwargs,
        )
        body = response.json()
        # Kuaishou's own client: an error is a non-200 status or a missing `data`.
        if response.status_code != 200 or body.get("data") is None:
            raise RuntimeError(f"Kling error {response.status_code}: {body}")
        return body["data"]

    def create(self, action: str, **body: Any) -> dict[str, Any]:
        return self._call("POST", f"/v1/videos/{action}", json=body)

    def get(self, action: str, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/videos/{action}/{task_id}")

    def wait(self, action: str, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(action, task_id)
            if task["task_status"] in ("succeed", "failed"):
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {task['task_status']}")
            time.sleep(0.2)


@pytest.fixture
def sim() -> Iterator[KlingSimulator]:
    with KlingSimulator(speed=20) as simulator:
        yield simulator


@pytest.fixture
def sdk(live_server, settings, sim) -> KlingClient:
    settings.SERVER_ADDRESS = ""  # no callbacks: the client's own polling finishes tasks
    Channel.objects.create(
        name="simulator", key=f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}", base_url=sim.url
    )
    Price.objects.create(model_name="kling-v1", mode="std", duration="5", quota=100)
    api_key = ApiKey.issue(make_consumer("sdk-user", quota=1000), name="sdk")[0]
    return KlingClient(f"{live_server.url}/kling", api_key.access_key, api_key.secret_key)


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("text2video", {"prompt": "a paper boat on a river", "model_name": "kling-v1"}),
        ("image2video", {"image": "https://img.test/boat.png", "prompt": "it drifts away"}),
    ],
)
def test_kling_sdk_drives_a_task_to_completion(sdk, sim, action, body):
    created = sdk.create(action, external_task_id=f"sdk-{action}", **body)
    assert created["task_status"] == "submitted"
    assert created["task_info"] == {"external_task_id": f"sdk-{action}"}

    done = sdk.wait(action, created["task_id"])

    assert done["task_status"] == "succeed"
    assert done["task_info"]["external_task_id"] == f"sdk-{action}"
    at_kling = sim.get_task(created["task_id"])
    assert done["task_result"] == at_kling["task_result"]
    assert done["created_at"] == at_kling["created_at"]
    video = requests.get(done["task_result"]["videos"][0]["url"], timeout=10)
    assert video.content[4:8] == b"ftyp"
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


def test_kling_sdk_sees_klings_errors(sdk):
    with pytest.raises(RuntimeError, match=r"400.*'code': 1201"):
        sdk.create("text2video", prompt="x", mode="ultra")
    with pytest.raises(RuntimeError, match=r"404.*'code': 1203"):
        sdk.get("text2video", "000000000000000000")
