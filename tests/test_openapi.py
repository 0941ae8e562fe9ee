"""The relay's OpenAPI schema (/api/schema/) and its documentation page (/api/docs/)."""

import re
from typing import Any

import jsonschema
import pytest
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from rest_framework.test import APIClient

from videos.models import VIDEO_ACTIONS
from videos.validation import SUBMIT_FIELDS

SUBMIT_PATHS = {f"/kling/v1/videos/{action}" for action in VIDEO_ACTIONS}
EXPECTED_OPERATIONS = (
    {("POST", path) for path in SUBMIT_PATHS}
    | {("GET", path) for path in SUBMIT_PATHS}
    | {
        ("GET", "/kling/v1/videos/{task_id}"),
        ("GET", "/kling/v1/videos/{action}/{task_id}"),
        ("POST", "/kling/v1/videos/batch-query"),
        ("POST", "/kling/internal/callback"),
    }
)
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_schema_is_served_publicly_as_yaml_and_json():
    # A stale or wrong Authorization header must not hide the documentation.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer kr-not-a-key")

    as_yaml = client.get("/api/schema/")
    assert as_yaml.status_code == 200
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    document = yaml.safe_load(as_yaml.content)
    assert document["openapi"].startswith("3.")

    as_json = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert as_json.status_code == 200
    assert as_json.json() == document


def test_schema_generates_without_warnings_and_validates(tmp_path):
    GENERATOR_STATS.reset()  # judge this generation only, not earlier ones in the process
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    assert yaml.safe_load(target.read_text())["info"]["title"] == "Kling Relay API"


def test_schema_lists_every_route_of_the_relay_and_nothing_else(schema):
    assert set(operations(schema)) == EXPECTED_OPERATIONS


def test_submit_bodies_are_the_validation_serializers_and_open(schema):
    components = schema["components"]["schemas"]
    for action in VIDEO_ACTIONS:
        body = operations(schema)[("POST", f"/kling/v1/videos/{action}")]["requestBody"]
        assert body["required"] is True
        ref = body["content"]["application/json"]["schema"]["$ref"]
        component = components[ref.rsplit("/", 1)[1]]
        fields = SUBMIT_FIELDS[action]().fields
        assert set(component["properties"]) == set(fields), action
        assert set(component.get("required", [])) == {
            name for name, field in fields.items() if field.required
        }, action
        # Kling's bodies take fields the relay does not know; they are passed through.
        assert component["additionalProperties"] is True, action
    assert all(
        component.get("additionalProperties") is True
        for component in components.values()
        if component.get("type") == "object"
    )


def test_kling_path_parameters_are_described(schema):
    query = operations(schema)[("GET", "/kling/v1/videos/{action}/{task_id}")]
    action = next(p for p in query["parameters"] if p["name"] == "action")
    assert sorted(action["schema"]["enum"]) == sorted(VIDEO_ACTIONS)
    listing = operations(schema)[("GET", "/kling/v1/videos/text2video")]
    page_size = next(p for p in listing["parameters"] if p["name"] == "pageSize")
    assert (page_size["schema"]["minimum"], page_size["schema"]["maximum"]) == (1, 500)


def test_answers_are_klings_envelopes(schema):
    for (method, path), operation in operations(schema).items():
        answers = operation["responses"]
        assert "200" in answers, (method, path)
        for status, answer in answers.items():
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            if status != "200":
                assert ref == "#/components/schemas/KlingError", (method, path, status)
    submit = operations(schema)[("POST", "/kling/v1/videos/text2video")]["responses"]
    assert set(submit) >= {"200", "400", "401", "403", "404", "429", "500", "503"}
    error = schema["components"]["schemas"]["KlingError"]
    assert set(error["required"]) == {"code", "message", "request_id"}
    task = schema["components"]["schemas"]["TaskObject"]
    statuses = schema["components"]["schemas"]["TaskStatusEnum"]["enum"]
    assert set(statuses) == {"submitted", "processing", "succeed", "failed"}
    assert {"task_id", "task_status", "created_at", "updated_at"} <= set(task["required"])


def test_both_credentials_are_described_as_alternatives(schema):
    schemes = schema["components"]["securitySchemes"]
    assert schemes["relayKey"]["scheme"] == schemes["klingJwt"]["scheme"] == "bearer"
    assert schemes["klingJwt"]["bearerFormat"] == "JWT"
    assert "kr-" in schemes["relayKey"]["description"]
    for (method, path), operation in operations(schema).items():
        expected = (
            [] if path == "/kling/internal/callback" else [{"relayKey": []}, {"klingJwt": []}]
        )
        assert operation.get("security", []) == expected, (method, path)


# Sample bodies on which the schema and validation.py must agree: the schema states the
# serializers' validate() rules (and DRF's blank/NUL rules) itself, so this catches drift.
AGREEMENT_SAMPLES = [
    ("text2video", {"prompt": "a fox", "unknown": {"passes": ["through"]}}, True),
    ("text2video", {"prompt": "   "}, False),
    ("text2video", {"prompt": "a\x00b"}, False),
    ("text2video", {"prompt": "a fox", "duration": "3"}, False),
    ("omni-video", {"prompt": "a fox", "duration": "3"}, True),
    ("image2video", {"image": "https://img.test/a.png"}, True),
    ("image2video", {"image_tail": "aGVsbG8="}, True),
    ("image2video", {}, False),
    ("image2video", {"image": " ", "image_tail": ""}, False),
    ("multi-image2video", {"prompt": "p", "image_list": [{"image": "a"}]}, True),
    ("multi-image2video", {"prompt": "p", "image_list": []}, False),
    ("multi-image2video", {"prompt": "p", "image_list": [{"image": "a"}] * 5}, False),
    ("video-extend", {"video_id": "v-1"}, True),
    ("video-extend", {"video_id": ""}, False),
    ("effects", {"effect_scene": "hug", "input": {"images": ["a", "b"]}}, True),
    ("effects", {"effect_scene": "hug", "input": {"image": "a"}}, True),
    ("effects", {"effect_scene": "hug", "input": {}}, False),
    ("effects", {"effect_scene": "hug", "input": {"images": [""]}}, False),
    (
        "lip-sync",
        {"input": {"video_id": "v-1", "mode": "text2video", "text": "hi", "voice_id": "v"}},
        True,
    ),
    ("lip-sync", {"input": {"mode": "text2video", "text": "hi", "voice_id": "v"}}, False),
]


@pytest.mark.parametrize(("action", "body", "valid"), AGREEMENT_SAMPLES)
def test_schema_and_validation_agree_on_sample_bodies(schema, action, body, valid):
    operation = operations(schema)[("POST", f"/kling/v1/videos/{action}")]
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    registry = Registry().with_resource("urn:relay", Resource(schema, specification=DRAFT4))
    validator = jsonschema.Draft4Validator(
        {"$ref": "urn:relay" + body_schema["$ref"]}, registry=registry
    )
    assert validator.is_valid(body) is valid
    assert SUBMIT_FIELDS[action](data=body).is_valid() is valid


def test_docs_page_renders_from_local_static_files():
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page and "/api/schema/" in page

    # Nothing is loaded from a CDN (or anywhere else off this host).
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert not re.search(r"https?://", page)
    assert '"validatorUrl": null' in page

    assets = re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", page)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    for asset in assets:
        assert finders.find(asset.removeprefix("/static/")), asset


def test_docs_page_is_public():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer kr-not-a-key")
    assert client.get("/api/docs/").status_code == 200
