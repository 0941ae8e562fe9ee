"""Kling's callbacks and consumers' queries, both moving tasks through one transition."""

import json

import pytest
import requests
import responses

from billing.models import Account, ApiKey, LedgerEntry
from tests.conftest import KLING_BASE, make_consumer
from tests.kling_fakes import envelope, task_object
from videos.models import CallbackEvent, VideoTask
from videos.services import callback_token

pytestmark = pytest.mark.usefixtures("channel", "prices")

TASK_ID = "781234567890123456"


@pytest.fixture
def submitted(api) -> VideoTask:
    with responses.RequestsMock() as mock:
        responses_mock_accept(mock)
        api.post(
            "/kling/v1/videos/text2video",
            {"prompt": "a cat", "external_task_id": "job-1"},
            format="json",
        )
    return VideoTask.objects.get()


def responses_mock_accept(mock) -> None:
    def reply(request):
        sent = json.loads(request.body)
        return (
            200,
            {},
            json.dumps(
                envelope(
                    {
                        "task_id": TASK_ID,
                        "task_status": "submitted",
                        "task_info": {"external_task_id": sent["external_task_id"]},
                        "created_at": 1,
                        "updated_at": 1,
                    }
                )
            ),
        )

    mock.add_callback(responses.POST, f"{KLING_BASE}/v1/videos/text2video", callback=reply)


def post_callback(client, body, token: str | None):
    url = "/kling/internal/callback" + (f"?token={token}" if token is not None else "")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.generic("POST", url, raw, content_type="application/json")


def balances(account: Account) -> tuple[int, int]:
    account.refresh_from_db()
    return account.quota, account.reserved


def test_succeed_callback_matched_by_external_id_charges_once(client, submitted, account):
    payload = task_object(TASK_ID, str(submitted.pk), "succeed")
    response = post_callback(client, payload, callback_token(submitted.pk))

    assert response.status_code == 200
    assert response.json()["code"] == 0
    submitted.refresh_from_db()
    assert submitted.status == "succeed"
    assert submitted.video_url == f"https://cdn.test/{TASK_ID}.mp4"
    assert submitted.video_id == f"vid-{TASK_ID}"
    assert submitted.upstream_payload == payload
    assert submitted.charged_quota == 100 and submitted.finished_at is not None
    assert balances(account) == (900, 0)
    charge = LedgerEntry.objects.get(kind="charge")
    assert (charge.amount, charge.charged_task_id, charge.balance_after) == (
        -100,
        submitted.pk,
        900,
    )
    event = CallbackEvent.objects.get()
    assert event.outcome == "applied" and event.task == submitted
    assert json.loads(event.body) == payload


def test_callback_matched_by_task_id_when_external_id_is_missing(client, submitted, account):
    payload = task_object(TASK_ID, "", "failed", task_status_msg="risk control")
    payload["task_info"] = {}
    post_callback(client, payload, callback_token(submitted.pk))

    submitted.refresh_from_db()
    assert submitted.status == "failed" and submitted.failure_reason == "risk control"
    assert balances(account) == (1000, 0)
    assert not LedgerEntry.objects.filter(kind="charge").exists()


def test_duplicate_callback_charges_once(client, submitted, account):
    payload = task_object(TASK_ID, str(submitted.pk), "succeed")
    for _ in range(3):
        assert post_callback(client, payload, callback_token(submitted.pk)).status_code == 200

    assert LedgerEntry.objects.filter(kind="charge").count() == 1
    assert balances(account) == (900, 0)
    outcomes = sorted(CallbackEvent.objects.values_list("outcome", flat=True))
    assert outcomes == ["applied", "stale", "stale"]


def test_late_processing_callback_does_not_reopen_a_finished_task(client, submitted):
    token = callback_token(submitted.pk)
    post_callback(client, task_object(TASK_ID, str(submitted.pk), "succeed"), token)
    post_callback(client, task_object(TASK_ID, str(submitted.pk), "processing"), token)
    post_callback(client, task_object(TASK_ID, str(submitted.pk), "failed"), token)

    submitted.refresh_from_db()
    assert submitted.status == "succeed"
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


def test_callback_with_bad_token_is_stored_but_not_acted_on(client, submitted, account):
    payload = task_object(TASK_ID, str(submitted.pk), "succeed")
    for token in ("forged", "", None):
        assert post_callback(client, payload, token).status_code == 200

    submitted.refresh_from_db()
    assert submitted.status == "submitted"
    assert balances(account) == (1000, 100)
    assert CallbackEvent.objects.filter(outcome="bad_token", task=submitted).count() == 3


def test_token_of_another_task_does_not_work(client, submitted, api):
    payload = task_object(TASK_ID, str(submitted.pk), "succeed")
    post_callback(client, payload, callback_token(submitted.pk + 1))
    submitted.refresh_from_db()
    assert submitted.status == "submitted"


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"hello": 1}'])
def test_garbage_callback_is_stored_and_answered(client, db, raw):
    response = post_callback(client, raw, "x")
    assert response.status_code == 200
    event = CallbackEvent.objects.get()
    assert event.outcome == "invalid" and event.body == raw.decode()


def test_unmatched_callback_is_kept(client, db):
    post_callback(client, task_object("999", "424242", "succeed"), "x")
    assert CallbackEvent.objects.get().outcome == "unmatched"


# --- query ---------------------------------------------------------------------------


@responses.activate
def test_query_of_unfinished_task_asks_kling_and_applies_the_answer(api, submitted, account):
    answer = envelope(task_object(TASK_ID, str(submitted.pk), "succeed"))
    responses.add(responses.GET, f"{KLING_BASE}/v1/videos/text2video/{TASK_ID}", json=answer)

    response = api.get(f"/kling/v1/videos/{TASK_ID}")

    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == answer["request_id"]
    assert body["data"]["task_status"] == "succeed"
    assert body["data"]["task_result"] == answer["data"]["task_result"]
    assert body["data"]["task_info"] == {"external_task_id": "job-1"}
    submitted.refresh_from_db()
    assert submitted.status == "succeed"
    assert balances(account) == (900, 0)


@responses.activate
def test_kling_query_path_with_action_works_too(api, submitted):
    answer = envelope(task_object(TASK_ID, str(submitted.pk), "processing"))
    responses.add(responses.GET, f"{KLING_BASE}/v1/videos/text2video/{TASK_ID}", json=answer)

    body = api.get(f"/kling/v1/videos/text2video/{TASK_ID}").json()
    assert body["data"]["task_status"] == "processing"
    assert api.get(f"/kling/v1/videos/image2video/{TASK_ID}").status_code == 404


@responses.activate
def test_finished_task_is_answered_from_the_database(api, client, submitted):
    payload = task_object(TASK_ID, str(submitted.pk), "succeed")
    post_callback(client, payload, callback_token(submitted.pk))

    response = api.get(f"/kling/v1/videos/{TASK_ID}")

    assert len(responses.calls) == 0
    body = response.json()
    assert body["code"] == 0 and body["message"] == "SUCCEED" and body["request_id"]
    expected = dict(payload, task_info={"external_task_id": "job-1"})
    assert body["data"] == expected


@responses.activate
def test_query_answers_last_known_state_when_kling_is_unreachable(api, submitted):
    responses.add(
        responses.GET,
        f"{KLING_BASE}/v1/videos/text2video/{TASK_ID}",
        body=requests.ConnectionError("down"),
    )
    body = api.get(f"/kling/v1/videos/{TASK_ID}").json()
    assert body["code"] == 0
    assert body["data"]["task_id"] == TASK_ID and body["data"]["task_status"] == "submitted"


def test_query_of_another_consumers_task_is_not_found(submitted, client_for):
    other = make_consumer("mallory", quota=10)
    response = client_for(ApiKey.issue(other)[1]).get(f"/kling/v1/videos/{TASK_ID}")
    assert response.status_code == 404
    assert response.json()["code"] == 1203


def test_list_shows_only_own_tasks_with_kling_paging(api, submitted, client_for):
    body = api.get("/kling/v1/videos/text2video?pageNum=1&pageSize=10").json()
    assert [t["task_id"] for t in body["data"]] == [TASK_ID]
    assert body["data"][0]["task_info"] == {"external_task_id": "job-1"}
    assert api.get("/kling/v1/videos/text2video?pageNum=2&pageSize=10").json()["data"] == []
    assert api.get("/kling/v1/videos/text2video?pageSize=501").status_code == 400
    assert api.get("/kling/v1/videos/text2video?pageNum=0").json()["code"] == 1201
    other = client_for(ApiKey.issue(make_consumer("eve"))[1])
    assert other.get("/kling/v1/videos/text2video").json()["data"] == []


def test_callback_for_a_foreign_task_reusing_our_id_falls_back_to_task_id(client, submitted):
    """Another system on the same Kling account sent external_task_id = our id."""
    foreign = task_object("OTHER-KLING-ID", str(submitted.pk), "succeed")
    post_callback(client, foreign, callback_token(submitted.pk))
    submitted.refresh_from_db()
    assert submitted.status == "submitted"
    assert CallbackEvent.objects.get().outcome == "unmatched"


@pytest.mark.parametrize(
    "raw", [b'{"task_status": "succeed", "task_id": NaN}', b"[" * 50_000 + b"]" * 50_000]
)
def test_hostile_callback_bodies_are_stored_as_invalid(client, db, raw):
    assert post_callback(client, raw, "x").status_code == 200
    assert CallbackEvent.objects.get().outcome == "invalid"


def test_a_finished_answer_is_served_again_without_a_query(
    api, client, submitted, django_assert_num_queries
):
    post_callback(
        client, task_object(TASK_ID, str(submitted.pk), "succeed"), callback_token(submitted.pk)
    )
    first = api.get(f"/kling/v1/videos/{TASK_ID}").json()
    with django_assert_num_queries(0):
        again = api.get(f"/kling/v1/videos/{TASK_ID}").json()
    assert again["data"] == first["data"] and again["request_id"] != first["request_id"]
