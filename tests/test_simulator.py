"""The Kling simulator on its own, over real HTTP (no database)."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import requests
from django.core.management import CommandError

from videos.management.commands.klingsim import parse_account
from videos.simulator import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_SECRET_KEY,
    FAIL_MARKER,
    KlingSimulator,
)

# The simulator's demo keys are shorter than PyJWT recommends; that is the point of them.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

OTHER_ACCESS_KEY = "other-access-key"
OTHER_SECRET_KEY = "other-secret-key"
ACCOUNTS = {DEFAULT_ACCESS_KEY: DEFAULT_SECRET_KEY, OTHER_ACCESS_KEY: OTHER_SECRET_KEY}
# Slow enough that the clock never moves a task during a test: tests move them with advance().
FROZEN_SPEED = 0.001
FAST_SPEED = 100.0


def make_token(
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    expires_in: float = 1800,
    not_before_in: float = -5,
) -> str:
    now = time.time()
    claims = {"iss": access_key, "exp": int(now + expires_in), "nbf": int(now + not_before_in)}
    return jwt.encode(claims, secret_key, algorithm="HS256", headers={"typ": "JWT"})


def auth(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}


def other_account_auth() -> dict[str, str]:
    return auth(make_token(OTHER_ACCESS_KEY, OTHER_SECRET_KEY))


def wait_until(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def sim() -> Iterator[KlingSimulator]:
    with KlingSimulator(accounts=ACCOUNTS, speed=FROZEN_SPEED) as simulator:
        yield simulator


@pytest.fixture
def fast_sim() -> Iterator[KlingSimulator]:
    with KlingSimulator(speed=FAST_SPEED) as simulator:
        yield simulator


def submit(
    sim: KlingSimulator,
    body: dict[str, Any],
    action: str = "text2video",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        f"{sim.url}/v1/videos/{action}", json=body, headers=headers or auth(), timeout=5
    )


def submit_ok(sim: KlingSimulator, body: dict[str, Any], action: str = "text2video") -> str:
    response = submit(sim, body, action)
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


def query(sim: KlingSimulator, action: str, key: str, headers: dict[str, str] | None = None):
    return requests.get(f"{sim.url}/v1/videos/{action}/{key}", headers=headers or auth(), timeout=5)


def succeeded_video_id(sim: KlingSimulator) -> str:
    task_id = submit_ok(sim, {"prompt": "a cat"})
    sim.advance(task_id)
    sim.advance(task_id)
    return sim.get_task(task_id)["task_result"]["videos"][0]["id"]


class CallbackReceiver:
    """A tiny HTTP server that records callbacks and answers the statuses it is told to."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: deque[int] = deque()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.bodies.append(body)
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/kling/callback"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.bodies)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    callback_receiver = CallbackReceiver()
    yield callback_receiver
    callback_receiver.close()


# --- authentication ---------------------------------------------------------------------------


def test_valid_token_is_accepted_and_answered_in_the_envelope(sim):
    response = requests.get(f"{sim.url}/v1/videos/text2video", headers=auth(), timeout=5)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == 0
    assert body["message"] == "SUCCEED"
    assert body["request_id"]
    assert body["data"] == []


def test_missing_authorization_is_code_1001(sim):
    response = requests.get(f"{sim.url}/v1/videos/text2video", timeout=5)

    assert response.status_code == 401
    assert response.json()["code"] == 1001
    assert "data" not in response.json()


@pytest.mark.parametrize(
    ("make_header", "code"),
    [
        pytest.param(lambda: f"Bearer {make_token(expires_in=-60)}", 1004, id="expired"),
        pytest.param(lambda: f"Bearer {make_token(not_before_in=60)}", 1003, id="not-yet-valid"),
        pytest.param(
            lambda: f"Bearer {make_token(secret_key='wrong-secret')}", 1002, id="bad-signature"
        ),
        pytest.param(lambda: f"Bearer {make_token(access_key='nobody')}", 1002, id="unknown-iss"),
        pytest.param(lambda: "Bearer not.a.jwt", 1002, id="garbled"),
        pytest.param(lambda: f"Basic {make_token()}", 1002, id="not-bearer"),
    ],
)
def test_bad_tokens_are_rejected_with_kling_codes(sim, make_header, code):
    header = make_header()
    response = requests.get(
        f"{sim.url}/v1/videos/text2video", headers={"Authorization": header}, timeout=5
    )

    assert response.status_code == 401
    assert response.json()["code"] == code


def test_a_few_seconds_of_clock_skew_are_tolerated(sim):
    token = make_token(expires_in=-2, not_before_in=2)

    response = requests.get(f"{sim.url}/v1/videos/text2video", headers=auth(token), timeout=5)

    assert response.status_code == 200


def test_each_account_is_checked_with_its_own_secret(sim):
    token = make_token(OTHER_ACCESS_KEY, DEFAULT_SECRET_KEY)

    response = requests.get(f"{sim.url}/v1/videos/text2video", headers=auth(token), timeout=5)

    assert response.json()["code"] == 1002


# --- submit -----------------------------------------------------------------------------------

SUBMIT_CASES = [
    ("text2video", {"prompt": "a cat surfing", "mode": "pro", "duration": "10"}),
    ("image2video", {"image": "https://example.com/cat.png", "prompt": "wave"}),
    ("image2video", {"image_tail": "aGVsbG8=", "aspect_ratio": "1:1"}),
    ("multi-image2video", {"image_list": [{"image": "a"}, {"image": "b"}], "prompt": "mix"}),
    ("omni-video", {"prompt": "<<<image_1>>> dances", "duration": "3"}),
]


@pytest.mark.parametrize(("action", "body"), SUBMIT_CASES)
def test_submit_answers_a_submitted_task(sim, action, body):
    before = int(time.time() * 1000)

    response = submit(sim, body | {"external_task_id": f"ext-{action}"}, action)

    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["code"] == 0
    data = envelope["data"]
    assert set(data) == {"task_id", "task_status", "task_info", "created_at", "updated_at"}
    assert len(data["task_id"]) == 18 and data["task_id"].isdigit()
    assert data["task_status"] == "submitted"
    assert data["task_info"] == {"external_task_id": f"ext-{action}"}
    assert data["created_at"] == data["updated_at"] >= before


def test_submit_without_external_id_has_empty_task_info(sim):
    response = submit(sim, {"prompt": "a cat"})

    assert response.json()["data"]["task_info"] == {}


def test_video_extend_names_its_parent_video(sim):
    parent_id = succeeded_video_id(sim)

    response = submit(sim, {"video_id": parent_id, "prompt": "keep going"}, "video-extend")

    assert response.status_code == 200, response.text
    task_id = response.json()["data"]["task_id"]
    parent = response.json()["data"]["task_info"]["parent_video"]
    assert parent["id"] == parent_id
    assert parent["duration"] == "5"
    assert parent["url"].endswith(f"/media/{parent_id}.mp4")
    sim.advance(task_id)
    sim.advance(task_id)
    assert sim.get_task(task_id)["task_result"]["videos"][0]["duration"] == "10"


@pytest.mark.parametrize(
    ("action", "body", "code", "named"),
    [
        ("text2video", {"mode": "std"}, 1201, "prompt"),
        ("text2video", {"prompt": "x", "mode": "ultra"}, 1201, "mode"),
        ("text2video", {"prompt": "x" * 2501}, 1201, "prompt"),
        ("text2video", {"prompt": "x", "negative_prompt": "n" * 2501}, 1201, "negative_prompt"),
        ("text2video", {"prompt": "x", "duration": "7"}, 1201, "duration"),
        ("text2video", {"prompt": "x", "aspect_ratio": "4:3"}, 1201, "aspect_ratio"),
        ("text2video", {"prompt": "x", "cfg_scale": 1.5}, 1201, "cfg_scale"),
        ("text2video", {"prompt": "x", "callback_url": "ftp://cb"}, 1201, "callback_url"),
        ("image2video", {"prompt": "x"}, 1201, "image"),
        ("multi-image2video", {"image_list": [], "prompt": "x"}, 1201, "image_list"),
        (
            "multi-image2video",
            {"image_list": [{"image": "a"}] * 5, "prompt": "x"},
            1201,
            "image_list",
        ),
        ("multi-image2video", {"image_list": [{"url": "a"}], "prompt": "x"}, 1201, "image"),
        ("multi-image2video", {"image_list": [{"image": "a"}]}, 1201, "prompt"),
        ("omni-video", {"prompt": "x", "duration": "11"}, 1201, "duration"),
        ("video-extend", {"prompt": "x"}, 1201, "video_id"),
        ("video-extend", {"video_id": "no-such-video"}, 1201, "video_id"),
    ],
)
def test_invalid_submits_are_rejected_naming_the_field(sim, action, body, code, named):
    response = submit(sim, body, action)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert named in response.json()["message"]
    assert sim.tasks() == []


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b""])
def test_a_body_that_is_not_a_json_object_is_code_1200(sim, raw):
    response = requests.post(f"{sim.url}/v1/videos/text2video", data=raw, headers=auth(), timeout=5)

    assert response.status_code == 400
    assert response.json()["code"] == 1200


def test_external_task_id_is_unique_per_account(sim):
    submit_ok(sim, {"prompt": "one", "external_task_id": "42"})

    duplicate = submit(
        sim, {"image": "https://x.test/a.png", "external_task_id": "42"}, "image2video"
    )
    other_account = submit(
        sim, {"prompt": "three", "external_task_id": "42"}, headers=other_account_auth()
    )

    assert duplicate.status_code == 400
    assert duplicate.json()["code"] == 1201
    assert "external_task_id" in duplicate.json()["message"]
    assert other_account.status_code == 200


def test_a_video_of_another_account_cannot_be_extended(sim):
    parent_id = succeeded_video_id(sim)

    response = submit(sim, {"video_id": parent_id}, "video-extend", headers=other_account_auth())

    assert response.json()["code"] == 1201


# --- query and list ---------------------------------------------------------------------------


def test_query_by_task_id_and_by_external_id(sim):
    task_id = submit_ok(sim, {"prompt": "a cat", "external_task_id": "ext 7/a"})

    by_id = query(sim, "text2video", task_id)
    by_external = query(sim, "text2video", "ext%207%2Fa")

    assert by_id.status_code == 200
    data = by_id.json()["data"]
    assert data["task_id"] == task_id
    assert data["task_status"] == "submitted"
    assert data["task_status_msg"] == ""
    assert data["task_info"] == {"external_task_id": "ext 7/a"}
    assert "task_result" not in data
    assert by_external.json()["data"] == data


@pytest.mark.parametrize(
    ("action", "key", "as_other_account"),
    [
        ("text2video", "999999999999999999", False),
        ("image2video", "OWN", False),
        ("text2video", "OWN", True),
    ],
    ids=["unknown", "other-action", "other-account"],
)
def test_query_of_a_task_that_is_not_yours_is_code_1203(sim, action, key, as_other_account):
    task_id = submit_ok(sim, {"prompt": "a cat"})
    headers = other_account_auth() if as_other_account else None

    response = query(sim, action, task_id if key == "OWN" else key, headers)

    assert response.status_code == 404
    assert response.json()["code"] == 1203


def test_list_pages_newest_first_within_account_and_action(sim):
    ids = [submit_ok(sim, {"prompt": f"cat {n}"}) for n in range(3)]
    submit_ok(sim, {"image": "https://example.com/x.png"}, "image2video")
    submit(sim, {"prompt": "theirs"}, headers=other_account_auth())

    def page(number: int, size: int) -> list[str]:
        response = requests.get(
            f"{sim.url}/v1/videos/text2video",
            params={"pageNum": number, "pageSize": size},
            headers=auth(),
            timeout=5,
        )
        assert response.status_code == 200
        return [task["task_id"] for task in response.json()["data"]]

    assert page(1, 2) == [ids[2], ids[1]]
    assert page(2, 2) == [ids[0]]
    assert page(3, 2) == []


def test_list_filters_by_external_id(sim):
    wanted = submit_ok(sim, {"prompt": "a", "external_task_id": "wanted"})
    submit_ok(sim, {"prompt": "b", "external_task_id": "other"})

    response = requests.get(
        f"{sim.url}/v1/videos/text2video",
        params={"external_task_id": "wanted"},
        headers=auth(),
        timeout=5,
    )

    assert [task["task_id"] for task in response.json()["data"]] == [wanted]


@pytest.mark.parametrize(
    "params",
    [{"pageNum": 0}, {"pageSize": 0}, {"pageSize": 501}, {"pageNum": "one"}],
)
def test_bad_paging_is_code_1201(sim, params):
    response = requests.get(
        f"{sim.url}/v1/videos/text2video", params=params, headers=auth(), timeout=5
    )

    assert response.status_code == 400
    assert response.json()["code"] == 1201


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/videos/no-such-action"),
        ("GET", "/v1/images/generations"),
        ("GET", "/nowhere"),
        ("DELETE", "/v1/videos/text2video"),
        ("POST", "/v1/videos/text2video/123456789012345678"),
    ],
)
def test_unknown_paths_and_methods_are_code_1202(sim, method, path):
    response = requests.request(method, f"{sim.url}{path}", headers=auth(), timeout=5)

    assert response.status_code == 404
    assert response.json()["code"] == 1202


# --- lifecycle --------------------------------------------------------------------------------


def test_advance_moves_a_task_to_processing_then_succeed(sim):
    task_id = submit_ok(sim, {"prompt": "a cat", "duration": "10", "mode": "pro"})
    submitted = sim.get_task(task_id)

    processing = sim.advance(task_id)[0]
    succeeded = sim.advance(task_id)[0]

    assert processing["task_status"] == "processing"
    assert succeeded["task_status"] == "succeed"
    assert submitted["updated_at"] < processing["updated_at"] < succeeded["updated_at"]
    assert succeeded["created_at"] == submitted["created_at"]
    [video] = succeeded["task_result"]["videos"]
    assert video["url"] == f"{sim.url}/media/{video['id']}.mp4"
    assert video["duration"] == "10"
    assert succeeded["final_unit_deduction"] == "7"
    assert query(sim, "text2video", task_id).json()["data"] == succeeded
    assert sim.advance(task_id) == []


def test_advance_without_id_moves_every_unfinished_task(sim):
    first = submit_ok(sim, {"prompt": "one"})
    sim.advance(first)
    second = submit_ok(sim, {"prompt": "two"})

    sim.advance()

    assert sim.get_task(first)["task_status"] == "succeed"
    assert sim.get_task(second)["task_status"] == "processing"
    assert sim.get_task(first)["final_unit_deduction"] == "1"


def test_advance_of_an_unknown_task_raises(sim):
    with pytest.raises(KeyError):
        sim.advance("nope")


def test_the_clock_finishes_tasks_on_its_own(fast_sim):
    task_id = submit_ok(fast_sim, {"prompt": "a cat"})
    seen = {fast_sim.get_task(task_id)["task_status"]}

    def finished() -> bool:
        seen.add(fast_sim.get_task(task_id)["task_status"])
        return "succeed" in seen

    wait_until(finished)
    assert seen >= {"submitted", "succeed"}


def test_the_fail_marker_ends_the_task_failed(sim):
    task_id = submit_ok(sim, {"prompt": f"a cat {FAIL_MARKER}"})

    sim.advance(task_id)
    failed = sim.advance(task_id)[0]

    assert failed["task_status"] == "failed"
    assert "risk control" in failed["task_status_msg"]
    assert "task_result" not in failed
    assert "final_unit_deduction" not in failed


# --- callbacks --------------------------------------------------------------------------------


def test_callbacks_post_the_bare_task_object_on_each_change(sim, receiver):
    task_id = submit_ok(sim, {"prompt": "a cat", "callback_url": receiver.url})

    sim.advance(task_id)
    sim.advance(task_id)

    bodies = wait_until(lambda: len(receiver.received()) >= 2 and receiver.received())
    assert [body["task_status"] for body in bodies] == ["processing", "succeed"]
    assert bodies[1] == sim.get_task(task_id)
    assert "code" not in bodies[0]
    attempts = sim.wait_for_callbacks(2)
    assert [(url, status) for url, status, _ in attempts] == [(receiver.url, 200)] * 2


def test_a_failed_callback_is_retried(fast_sim, receiver):
    receiver.statuses.extend([500])

    submit_ok(fast_sim, {"prompt": "a cat", "callback_url": receiver.url})

    bodies = wait_until(lambda: len(receiver.received()) >= 3 and receiver.received())
    assert [body["task_status"] for body in bodies] == ["processing", "processing", "succeed"]
    assert [status for _, status, _ in fast_sim.wait_for_callbacks(3)] == [500, 200, 200]


def test_an_unreachable_receiver_gets_four_attempts(fast_sim, receiver):
    dead_url = receiver.url
    receiver.close()

    task_id = submit_ok(fast_sim, {"prompt": "a cat", "callback_url": dead_url})
    fast_sim.advance(task_id)

    attempts = wait_until(lambda: len(fast_sim.callback_log) >= 4 and fast_sim.callback_log)
    processing_attempts = [a for a in attempts if a[2]["task_status"] == "processing"]
    assert len(processing_attempts) == 4
    assert all(isinstance(result, str) for _, result, _ in processing_attempts)


def test_drop_fault_skips_a_callback(sim, receiver):
    task_id = submit_ok(sim, {"prompt": "a cat", "callback_url": receiver.url})
    sim.faults.drop_callbacks(1)

    sim.advance(task_id)
    sim.advance(task_id)

    sim.wait_for_callbacks(1)
    time.sleep(0.1)  # give a wrongly sent second callback time to arrive
    assert [body["task_status"] for body in receiver.received()] == ["succeed"]


def test_duplicate_fault_sends_a_callback_twice(sim, receiver):
    task_id = submit_ok(sim, {"prompt": "a cat", "callback_url": receiver.url})
    sim.faults.duplicate_callbacks(1)

    sim.advance(task_id)
    sim.advance(task_id)

    bodies = wait_until(lambda: len(receiver.received()) >= 3 and receiver.received())
    assert [body["task_status"] for body in bodies] == ["processing", "processing", "succeed"]


# --- request faults ---------------------------------------------------------------------------


def test_fail_next_answers_the_given_error_then_recovers(sim):
    sim.faults.fail_next(2, status=503, code=5001)

    first = submit(sim, {"prompt": "a cat"})
    second = requests.get(f"{sim.url}/v1/videos/text2video", headers=auth(), timeout=5)
    third = submit(sim, {"prompt": "a cat"})

    assert (first.status_code, first.json()["code"]) == (503, 5001)
    assert (second.status_code, second.json()["code"]) == (503, 5001)
    assert third.status_code == 200
    assert len(sim.tasks()) == 1


def test_timeout_next_hangs_after_accepting_the_task(sim):
    sim.faults.timeout_next(1, seconds=1.0)

    with pytest.raises(requests.Timeout):
        requests.post(
            f"{sim.url}/v1/videos/text2video",
            json={"prompt": "a cat", "external_task_id": "lost"},
            headers=auth(),
            timeout=0.2,
        )
    started = time.monotonic()
    found = query(sim, "text2video", "lost")

    assert time.monotonic() - started < 0.5
    assert found.json()["data"]["task_info"]["external_task_id"] == "lost"


def test_stop_does_not_wait_for_a_hanging_request():
    simulator = KlingSimulator(speed=FROZEN_SPEED).start()
    simulator.faults.timeout_next(1, seconds=30)
    errors: list[Exception] = []

    def call() -> None:
        try:
            requests.get(f"{simulator.url}/v1/videos/text2video", headers=auth(), timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: simulator.faults.snapshot()["timeout_next"] == 0)
    started = time.monotonic()
    simulator.stop()
    simulator.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 3
    assert not caller.is_alive()
    assert errors


# --- media ------------------------------------------------------------------------------------


def test_media_serves_a_valid_mp4_without_auth(sim):
    task_id = submit_ok(sim, {"prompt": "a cat"})
    sim.advance(task_id)
    url = sim.advance(task_id)[0]["task_result"]["videos"][0]["url"]

    response = requests.get(url, timeout=5)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "video/mp4"
    content = response.content
    ftyp_size = struct.unpack(">I", content[:4])[0]
    assert content[4:8] == b"ftyp"
    assert content[ftyp_size + 4 : ftyp_size + 8] == b"moov"
    assert b"mvhd" in content and b"trak" in content and b"mdat" in content
    assert len(content) < 4096


def test_media_of_an_unknown_video_is_404(sim):
    response = requests.get(f"{sim.url}/media/00000000-0000-0000-0000-000000000000.mp4", timeout=5)

    assert response.status_code == 404


# --- control surface --------------------------------------------------------------------------


def test_control_surface_drives_faults_advance_and_tasks(sim):
    control = f"{sim.url}/_sim"

    fault = requests.post(f"{control}/faults", json={"fail_next": 1, "code": 5000}, timeout=5)
    failed = submit(sim, {"prompt": "a cat"})
    task_id = submit_ok(sim, {"prompt": "a cat"})
    advanced = requests.post(f"{control}/advance", json={"task_id": task_id}, timeout=5)
    advanced_all = requests.post(f"{control}/advance", timeout=5)
    tasks = requests.get(f"{control}/tasks", timeout=5)

    assert fault.json()["ok"] is True
    assert (failed.status_code, failed.json()["code"]) == (500, 5000)
    assert advanced.json()["ok"] is True
    assert advanced.json()["advanced"][0]["task_status"] == "processing"
    assert advanced_all.json()["advanced"][0]["task_status"] == "succeed"
    assert tasks.json() == sim.tasks()
    assert tasks.json()[0]["task_status"] == "succeed"


def test_control_surface_sets_and_resets_faults(sim):
    control = f"{sim.url}/_sim"

    requests.post(f"{control}/faults", json={"timeout_next": 2, "seconds": 3}, timeout=5)
    requests.post(f"{control}/faults", json={"drop_callbacks": 1}, timeout=5)
    requests.post(f"{control}/faults", json={"duplicate_callbacks": 4}, timeout=5)
    before = requests.get(f"{control}/faults", timeout=5).json()
    reset = requests.post(f"{control}/faults", json={"reset": True}, timeout=5)

    assert before["timeout_next"] == 2 and before["seconds"] == 3
    assert before["drop_callbacks"] == 1 and before["duplicate_callbacks"] == 4
    assert reset.json()["faults"]["timeout_next"] == 0
    assert reset.json()["faults"]["duplicate_callbacks"] == 0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/_sim/faults", {"explode": 1}, 400),
        ("/_sim/faults", {"fail_next": -1}, 400),
        ("/_sim/advance", {"task_id": "nope"}, 404),
    ],
)
def test_control_surface_rejects_bad_requests(sim, path, body, status):
    response = requests.post(f"{sim.url}{path}", json=body, timeout=5)

    assert response.status_code == status
    assert response.json()["ok"] is False


# --- management command -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "pair"),
    [("ak:sk", ("ak", "sk")), ("ak|s:k", ("ak", "s:k")), ("ak:s:k", ("ak", "s:k"))],
)
def test_klingsim_accepts_account_pairs(value, pair):
    assert parse_account(value) == pair


def test_klingsim_rejects_a_malformed_account():
    with pytest.raises(CommandError):
        parse_account("just-a-key")
