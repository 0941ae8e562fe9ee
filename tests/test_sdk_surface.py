"""The rest of Kling's video surface: extend, lip-sync, effects, lookups, batch query."""

import json

import pytest
import responses

from billing.models import Price
from tests.conftest import KLING_BASE, make_task, reserved_task
from tests.kling_fakes import accept_submit, envelope, sent_body, task_object
from videos.models import VideoTask

pytestmark = pytest.mark.usefixtures("channel", "prices")


def finished_task(account, channel, task_id="T1", video_id="V1", **fields) -> VideoTask:
    video = {"video_id": video_id, "video_url": f"https://cdn.test/{video_id}.mp4"}
    return make_task(
        account,
        channel,
        status="succeed",
        task_id=task_id,
        upstream_payload=task_object(task_id, "1", "succeed"),
        **(video | fields),
    )


@responses.activate
def test_video_extend_routes_to_the_parent_channel_and_is_priced_by_action(api, account, channel):
    finished_task(account, channel)
    Price.objects.create(
        model_name="kling-v1", mode="std", duration="5", action="video-extend", quota=60
    )
    accept_submit("video-extend", task_id="T2")

    response = api.post(
        "/kling/v1/videos/video-extend", {"video_id": "V1", "prompt": "and then"}, format="json"
    )

    assert response.status_code == 200
    extension = VideoTask.objects.get(task_id="T2")
    assert extension.channel == channel and extension.reserved_quota == 60
    assert sent_body()["video_id"] == "V1"


def test_video_extend_of_someone_elses_video_is_refused(api, channel, db):
    from tests.conftest import make_consumer

    finished_task(make_consumer("other"), channel)
    response = api.post("/kling/v1/videos/video-extend", {"video_id": "V1"}, format="json")
    assert response.status_code == 400
    assert response.json()["message"].startswith("video_id:")


@responses.activate
def test_parent_video_is_passed_through_in_query_results(api, account, channel, client):
    parent = {"id": "V1", "url": "https://cdn.test/V1.mp4", "duration": "5"}
    task = make_task(account, channel, action="video-extend", status="processing", task_id="T3")
    answer = envelope(task_object("T3", str(task.pk), "processing"))
    answer["data"]["task_info"]["parent_video"] = parent
    responses.add(responses.GET, f"{KLING_BASE}/v1/videos/video-extend/T3", json=answer)

    body = api.get("/kling/v1/videos/video-extend/T3").json()
    assert body["data"]["task_info"] == {"parent_video": parent}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "input:"),
        ({"input": {"mode": "text2video", "text": "hi"}}, "input.video_id:"),
        (
            {"input": {"video_url": "https://v.test/a.mp4", "mode": "text2video", "text": "hi"}},
            "input.voice_id:",
        ),
        (
            {"input": {"video_url": "https://v.test/a.mp4", "mode": "audio2video"}},
            "input.audio_type:",
        ),
    ],
)
def test_lip_sync_validation_names_the_field(api, body, message):
    response = api.post("/kling/v1/videos/lip-sync", body, format="json")
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)


@responses.activate
def test_lip_sync_and_effects_are_priced_through_the_price_table(api):
    body = {
        "input": {
            "video_url": "https://v.test/a.mp4",
            "mode": "audio2video",
            "audio_type": "url",
            "audio_url": "https://a.test/a.mp3",
        }
    }
    response = api.post("/kling/v1/videos/lip-sync", body, format="json")
    assert response.status_code == 400 and "no price" in response.json()["message"]

    Price.objects.create(model_name="kling-lip-sync", mode="std", duration="5", quota=30)
    accept_submit("lip-sync", task_id="L1")
    assert api.post("/kling/v1/videos/lip-sync", body, format="json").status_code == 200
    assert VideoTask.objects.get(task_id="L1").reserved_quota == 30

    accept_submit("effects", task_id="E1")
    effects = {
        "effect_scene": "hug",
        "input": {"model_name": "kling-v1-6", "mode": "std", "images": ["a", "b"], "duration": "5"},
    }
    assert api.post("/kling/v1/videos/effects", effects, format="json").status_code == 200
    assert VideoTask.objects.get(task_id="E1").reserved_quota == 100


def test_query_by_consumers_external_task_id(api, account, channel):
    finished_task(account, channel, consumer_external_task_id="order-42")
    body = api.get("/kling/v1/videos/text2video/order-42").json()
    assert body["data"]["task_id"] == "T1"
    assert body["data"]["task_info"] == {"external_task_id": "order-42"}


@responses.activate
def test_batch_query_mixes_database_and_kling_answers(api, account, channel):
    finished_task(account, channel, task_id="DONE", video_id="VD")
    running = reserved_task(account, channel, task_id="RUN")
    responses.add(
        responses.GET,
        f"{KLING_BASE}/v1/videos/text2video/RUN",
        json=envelope(task_object("RUN", str(running.pk), "succeed")),
    )

    response = api.post(
        "/kling/v1/videos/batch-query", {"task_ids": ["DONE", "RUN", "NOPE", "DONE"]}, format="json"
    )

    data = response.json()["data"]
    assert [t["task_id"] for t in data["tasks"]] == ["DONE", "RUN"]
    assert data["tasks"][1]["task_status"] == "succeed"
    assert data["not_found"] == ["NOPE"]
    assert len(responses.calls) == 1  # only the unfinished task was asked of Kling
    running.refresh_from_db()
    assert running.status == "succeed"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"task_ids": []},
        {"task_ids": "x"},
        {"task_ids": [1]},
        {"task_ids": [str(i) for i in range(101)]},
    ],
)
def test_batch_query_checks_its_input(api, body):
    response = api.post("/kling/v1/videos/batch-query", body, format="json")
    assert response.status_code == 400 and response.json()["message"].startswith("task_ids:")


def test_unknown_fields_pass_through_untouched(api):
    with responses.RequestsMock() as mock:
        mock.add(
            responses.POST,
            f"{KLING_BASE}/v1/videos/text2video",
            json=envelope({"task_id": "X", "task_status": "submitted", "task_info": {}}),
        )
        api.post(
            "/kling/v1/videos/text2video",
            {"prompt": "p", "brand_new_field": {"nested": [1, 2]}},
            format="json",
        )
        assert json.loads(mock.calls[0].request.body)["brand_new_field"] == {"nested": [1, 2]}
