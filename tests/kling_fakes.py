"""Kling's answers as the network edge returns them, for `responses`-mocked tests."""

import json
import time

import responses

from tests.conftest import KLING_BASE


def envelope(data, code: int = 0, message: str = "SUCCEED") -> dict:
    return {"code": code, "message": message, "request_id": "kling-req-1", "data": data}


def task_object(task_id: str, external_id: str, status: str = "submitted", **extra) -> dict:
    now = int(time.time() * 1000)
    obj = {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": extra.pop("task_status_msg", ""),
        "task_info": {"external_task_id": external_id},
        "created_at": now,
        "updated_at": now,
    }
    if status == "succeed":
        obj["task_result"] = {
            "videos": [
                {
                    "id": f"vid-{task_id}",
                    "url": f"https://cdn.test/{task_id}.mp4",
                    "duration": "5.1",
                }
            ]
        }
    obj.update(extra)
    return obj


def accept_submit(action: str, task_id: str = "781234567890123456", base: str = KLING_BASE):
    """Mock Kling accepting a submit: echoes the external_task_id the relay sent."""

    def callback(request):
        sent = json.loads(request.body)
        body = envelope(
            {
                "task_id": task_id,
                "task_status": "submitted",
                "task_info": {"external_task_id": sent["external_task_id"]},
                "created_at": 1722769557708,
                "updated_at": 1722769557708,
            }
        )
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    return responses.add_callback(responses.POST, f"{base}/v1/videos/{action}", callback=callback)


def sent_body(call_index: int = 0) -> dict:
    return json.loads(responses.calls[call_index].request.body)
