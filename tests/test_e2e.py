"""End to end over real HTTP: consumers call the relay (live_server) with `requests`, the
relay calls the Kling simulator, and the simulator's callbacks come back on their own.

Nothing is mocked: every test waits for what a real deployment would see, with short polls
and generous deadlines.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from billing.models import Account, ApiKey, LedgerEntry, Price
from channels_app.models import Channel
from tests.conftest import make_consumer
from tests.e2e_support import (
    CallbackReceiver,
    local_session,
    run_task_worker,
    wait_for,
)
from videos.consumer_callbacks import SIGNATURE_HEADER, signature_for
from videos.models import CallbackDelivery, CallbackEvent, VideoTask
from videos.simulator import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_SECRET_KEY,
    FAIL_MARKER,
    FAILURE_MESSAGE,
    KlingSimulator,
)

pytestmark = pytest.mark.django_db(transaction=True)

# A task takes (2 + 6) / SPEED seconds in the simulator: fast, yet slower than one request.
SPEED = 20.0
QUOTA = 10_000
SIM_KEY = f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}"
# Distinct prices, so a charge shows which price was applied.
PRICES = [
    # model, mode, duration, action, quota
    ("kling-v1", "std", "5", "", 100),
    ("kling-v1", "std", "5", "video-extend", 55),
    ("kling-v1-6", "std", "5", "", 130),
    ("kling-v1-6", "std", "10", "", 260),
    ("kling-v2-master", "pro", "10", "", 700),
    ("kling-video-o1", "std", "3", "", 90),
]


@dataclass
class Consumer:
    account: Account
    api_key: ApiKey
    http: requests.Session
    relay: str  # the relay's Kling base URL, like https://api-singapore.klingai.com

    def submit(self, action: str, body: dict[str, Any]) -> requests.Response:
        return self.http.post(f"{self.relay}/v1/videos/{action}", json=body, timeout=30)

    def query(self, action: str, task_id: str) -> requests.Response:
        return self.http.get(f"{self.relay}/v1/videos/{action}/{task_id}", timeout=30)

    def balances(self) -> tuple[int, int]:
        self.account.refresh_from_db()
        return self.account.quota, self.account.reserved


@pytest.fixture
def sim() -> Iterator[KlingSimulator]:
    with KlingSimulator(speed=SPEED) as simulator:
        yield simulator


@pytest.fixture
def relay(live_server, settings) -> str:
    settings.SERVER_ADDRESS = live_server.url  # Kling's callbacks come back to live_server
    return f"{live_server.url}/kling"


@pytest.fixture
def prices() -> None:
    for model_name, mode, duration, action, quota in PRICES:
        Price.objects.create(
            model_name=model_name, mode=mode, duration=duration, action=action, quota=quota
        )


@pytest.fixture
def sim_channel(sim) -> Channel:
    return Channel.objects.create(name="simulator", key=SIM_KEY, base_url=sim.url)


@pytest.fixture
def consumer(relay, prices) -> Iterator[Consumer]:
    account = make_consumer("e2e", quota=QUOTA)
    api_key, raw_key = ApiKey.issue(account, name="e2e")
    http = local_session(raw_key)
    yield Consumer(account, api_key, http, relay)
    http.close()


def finished_task(task_id: str, timeout: float = 20.0) -> VideoTask:
    """Wait, reading only the database, until the task is finished."""
    return wait_for(
        lambda: VideoTask.objects.filter(task_id=task_id, status__in=["succeed", "failed"]).first(),
        timeout=timeout,
        what=f"task {task_id} to finish in the relay's database",
    )


def submitted_task_id(response: requests.Response, external_task_id: str) -> str:
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["code"] == 0 and answer["message"] == "SUCCEED" and answer["request_id"]
    assert answer["data"]["task_status"] == "submitted"
    # The relay's own external_task_id (its row id) never reaches the consumer.
    assert answer["data"]["task_info"].get("external_task_id") == external_task_id
    return answer["data"]["task_id"]


def assert_charged_once(consumer: Consumer, task: VideoTask, price: int, before: int) -> None:
    assert consumer.balances() == (before - price, 0)
    assert task.charged_quota == price
    charge = LedgerEntry.objects.get(charged_task_id=task.pk)
    assert (charge.kind, charge.amount, charge.account_id) == ("charge", -price, task.owner_id)


def assert_nothing_charged(consumer: Consumer) -> None:
    assert consumer.balances() == (QUOTA, 0)
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).exists()


def assert_query_matches_simulator(
    consumer: Consumer, sim: KlingSimulator, action: str, task_id: str, external_task_id: str
) -> dict[str, Any]:
    """The relay's answer is the simulator's task object, with the consumer's external id."""
    expected = copy.deepcopy(sim.get_task(task_id))
    expected["task_info"]["external_task_id"] = external_task_id
    for response in (
        consumer.query(action, task_id),
        consumer.http.get(f"{consumer.relay}/v1/videos/{task_id}", timeout=30),
    ):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["code"], answer["message"]) == (0, "SUCCEED")
        data = answer["data"]
        assert set(data) == set(expected)
        for field, value in expected.items():
            assert data[field] == value, field
    return expected


def assert_finished_by_callback(task: VideoTask) -> None:
    # The event is marked applied just after the task's change commits: allow for the gap.
    wait_for(
        lambda: any(
            json.loads(body).get("task_status") == task.status
            for body in CallbackEvent.objects.filter(
                task=task, outcome=CallbackEvent.Outcome.APPLIED
            ).values_list("body", flat=True)
        ),
        timeout=5,
        what=f"the {task.status} callback of task {task.task_id} to be applied",
    )


SUBMIT_CASES = [
    pytest.param(
        "text2video",
        {
            "prompt": "a cat surfing",
            "model_name": "kling-v2-master",
            "mode": "pro",
            "duration": "10",
        },
        700,
        id="text2video",
    ),
    pytest.param(
        "image2video",
        {"image": "https://example.com/cat.png", "prompt": "wave", "model_name": "kling-v1-6"},
        130,
        id="image2video",
    ),
    pytest.param(
        "multi-image2video",
        {
            "image_list": [{"image": "https://example.com/a.png"}, {"image": "aGVsbG8="}],
            "prompt": "the two of them dancing",
            "duration": "10",
        },
        260,
        id="multi-image2video",
    ),
    pytest.param(
        "omni-video",
        {
            "prompt": "<<<image_1>>> dances in the rain",
            "image_list": [{"image_url": "https://example.com/a.png", "type": "first_frame"}],
            "duration": "3",
        },
        90,
        id="omni-video",
    ),
]


@pytest.mark.parametrize(("action", "body", "price"), SUBMIT_CASES)
def test_each_submit_endpoint_runs_end_to_end(sim, sim_channel, consumer, action, body, price):
    external_task_id = f"mine-{action}"

    response = consumer.submit(action, body | {"external_task_id": external_task_id})

    task_id = submitted_task_id(response, external_task_id)
    assert VideoTask.objects.get(task_id=task_id).reserved_quota == price
    task = finished_task(task_id)
    assert task.status == "succeed", task.failure_reason
    assert (task.action, task.channel_id) == (action, sim_channel.pk)
    assert_finished_by_callback(task)
    assert_charged_once(consumer, task, price, before=QUOTA)
    expected = assert_query_matches_simulator(consumer, sim, action, task_id, external_task_id)
    [video] = expected["task_result"]["videos"]
    assert (task.video_id, task.video_url) == (video["id"], video["url"])
    # The sim's clock sent the submitted → processing → succeed story, nothing more.
    sim.wait_for_callbacks(2)  # recorded once the relay has answered them
    assert [(body["task_status"], result) for _, result, body in sim.callback_attempts()] == [
        ("processing", 200),
        ("succeed", 200),
    ]


def test_video_extend_of_a_finished_video_runs_end_to_end(sim, sim_channel, consumer):
    parent_id = submitted_task_id(
        consumer.submit("text2video", {"prompt": "a cat", "external_task_id": "parent"}),
        "parent",
    )
    parent = finished_task(parent_id)
    assert parent.status == "succeed" and parent.video_id

    response = consumer.submit(
        "video-extend",
        {"video_id": parent.video_id, "prompt": "and then it jumps", "external_task_id": "ext"},
    )

    task_id = submitted_task_id(response, "ext")
    task = finished_task(task_id)
    assert task.status == "succeed", task.failure_reason
    assert_finished_by_callback(task)
    assert_charged_once(consumer, task, 55, before=QUOTA - 100)
    expected = assert_query_matches_simulator(consumer, sim, "video-extend", task_id, "ext")
    assert expected["task_info"]["parent_video"]["id"] == parent.video_id
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).count() == 2


def test_a_task_kling_fails_is_not_charged_and_keeps_its_reason(sim, sim_channel, consumer):
    response = consumer.submit(
        "text2video", {"prompt": f"a cat {FAIL_MARKER}", "external_task_id": "doomed"}
    )

    task_id = submitted_task_id(response, "doomed")
    task = finished_task(task_id)
    assert task.status == "failed"
    assert task.failure_reason == FAILURE_MESSAGE
    assert task.charged_quota == 0
    assert_finished_by_callback(task)
    assert_nothing_charged(consumer)
    expected = assert_query_matches_simulator(consumer, sim, "text2video", task_id, "doomed")
    assert (expected["task_status"], expected["task_status_msg"]) == ("failed", FAILURE_MESSAGE)


def test_a_callback_that_never_comes_is_made_up_for_by_the_query(sim, sim_channel, consumer):
    sim.faults.drop_callbacks(2)  # both of the task's callbacks: processing and succeed

    task_id = submitted_task_id(
        consumer.submit("text2video", {"prompt": "a cat", "external_task_id": "quiet"}), "quiet"
    )
    wait_for(
        lambda: sim.get_task(task_id)["task_status"] == "succeed",
        what="the simulator to finish the task",
    )
    assert sim.callback_attempts() == []
    assert VideoTask.objects.get(task_id=task_id).status == "submitted"
    assert consumer.balances() == (QUOTA, 100)

    first = consumer.query("text2video", task_id)

    assert first.status_code == 200 and first.json()["data"]["task_status"] == "succeed"
    task = VideoTask.objects.get(task_id=task_id)
    assert task.status == "succeed"
    assert not CallbackEvent.objects.filter(task=task).exists()
    assert_charged_once(consumer, task, 100, before=QUOTA)
    assert_query_matches_simulator(consumer, sim, "text2video", task_id, "quiet")
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).count() == 1


def test_duplicate_callbacks_charge_once(sim, sim_channel, consumer):
    sim.faults.duplicate_callbacks(2)  # processing and succeed each arrive twice

    task_id = submitted_task_id(
        consumer.submit("text2video", {"prompt": "a cat", "external_task_id": "twice"}), "twice"
    )

    task = finished_task(task_id)
    events = wait_for(
        lambda: (
            (found := list(CallbackEvent.objects.filter(task=task).order_by("id")))
            and len(found) == 4
            and all(event.outcome != CallbackEvent.Outcome.RECEIVED for event in found)
            and found
        ),
        what="four callbacks to be stored and processed",
    )
    assert [event.outcome for event in events] == ["applied", "stale", "applied", "stale"]
    assert task.status == "succeed"
    assert_charged_once(consumer, task, 100, before=QUOTA)
    assert_query_matches_simulator(consumer, sim, "text2video", task_id, "twice")


def test_a_5xx_on_the_first_channel_fails_over_to_the_second(consumer):
    with KlingSimulator(speed=SPEED) as broken, KlingSimulator(speed=SPEED) as healthy:
        first = Channel.objects.create(name="first", key=SIM_KEY, base_url=broken.url, priority=9)
        second = Channel.objects.create(name="second", key=SIM_KEY, base_url=healthy.url)
        broken.faults.fail_next(1, status=500, code=5000)

        response = consumer.submit("text2video", {"prompt": "a cat", "external_task_id": "fo"})

        task_id = submitted_task_id(response, "fo")
        assert broken.tasks() == []
        assert [task["task_id"] for task in healthy.tasks()] == [task_id]
        task = finished_task(task_id)
        assert task.status == "succeed"
        assert (task.channel_id, task.channels_tried) == (second.pk, [first.pk, second.pk])
        assert_charged_once(consumer, task, 100, before=QUOTA)
        assert_query_matches_simulator(consumer, healthy, "text2video", task_id, "fo")
    first.refresh_from_db()
    assert first.is_enabled and (first.request_count, first.failure_count) == (1, 1)


def test_concurrent_tasks_are_each_charged_once(sim, sim_channel, consumer):
    def submit(number: int) -> str:
        response = consumer.submit(
            "text2video", {"prompt": "a cat", "external_task_id": f"c{number}"}
        )
        return submitted_task_id(response, f"c{number}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        task_ids = list(pool.map(submit, range(12)))

    tasks = [finished_task(task_id) for task_id in task_ids]
    assert {task.status for task in tasks} == {"succeed"}
    assert consumer.balances() == (QUOTA - 12 * 100, 0)
    charged = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE)
    assert sorted(charged.values_list("charged_task_id", flat=True)) == sorted(t.pk for t in tasks)


def test_a_submit_answer_slower_than_the_callbacks_still_records_the_channel(
    sim, sim_channel, consumer
):
    sim.faults.timeout_next(1, seconds=3.0)  # Kling accepts the task but answers late

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(
            consumer.submit, "text2video", {"prompt": "a cat", "external_task_id": "late"}
        )
        task = wait_for(
            lambda: (
                VideoTask.objects.filter(consumer_external_task_id="late", status="succeed")
                .exclude(task_id=None)
                .first()
            ),
            what="the callbacks to finish the task",
        )
        if pending.done():
            pytest.skip("the submit answer came before the callbacks: the race did not happen")
        submitted_task_id(pending.result(timeout=30), "late")

    task.refresh_from_db()
    assert (task.status, task.channel_id) == ("succeed", sim_channel.pk)
    assert_charged_once(consumer, task, 100, before=QUOTA)
    # A video is extended on the channel that made it: the channel must be known.
    extend = consumer.submit("video-extend", {"video_id": task.video_id})
    assert extend.status_code == 200, extend.text


@pytest.mark.parametrize(("status", "code"), [(500, 5000), (503, 5001), (429, 1303)])
def test_a_transient_error_on_the_only_channel_reaches_the_consumer(
    sim, sim_channel, consumer, status, code
):
    sim.faults.fail_next(1, status=status, code=code)

    response = consumer.submit("text2video", {"prompt": "a cat", "external_task_id": "busy"})

    assert response.status_code == status
    answer = response.json()
    assert answer["code"] == code and answer["message"] and answer["request_id"]
    assert "data" not in answer
    assert sim.tasks() == []
    task = VideoTask.objects.get()
    assert task.status == "failed" and task.task_id is None
    assert f"code {code}" in task.failure_reason
    assert_nothing_charged(consumer)
    sim_channel.refresh_from_db()
    assert sim_channel.is_enabled


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    callback_receiver = CallbackReceiver()
    yield callback_receiver
    callback_receiver.close()


def test_the_consumer_gets_the_final_task_object_signed_at_its_callback_url(
    sim, sim_channel, consumer, receiver, settings
):
    settings.CONSUMER_CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]

    response = consumer.submit(
        "text2video",
        {"prompt": "a cat", "external_task_id": "hooked", "callback_url": receiver.url},
    )

    task_id = submitted_task_id(response, "hooked")
    task = finished_task(task_id)
    # Deliveries are queued once their transition commits; wait for both to be queued.
    from django_tasks_db.models import DBTaskResult

    wait_for(
        lambda: DBTaskResult.objects.count() >= 2 == CallbackDelivery.objects.count(),
        what="the consumer's callbacks to be queued",
    )
    assert receiver.received() == []  # nothing is sent until the worker runs

    run_task_worker()

    received = receiver.received()
    assert [callback.json()["task_status"] for callback in received] == ["processing", "succeed"]
    final = received[-1]
    expected = assert_query_matches_simulator(consumer, sim, "text2video", task_id, "hooked")
    assert final.json() == expected
    header = final.headers[SIGNATURE_HEADER]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert header == signature_for(consumer.api_key.webhook_secret, timestamp, final.body)
    assert set(CallbackDelivery.objects.filter(task=task).values_list("state", flat=True)) == {
        "delivered"
    }
