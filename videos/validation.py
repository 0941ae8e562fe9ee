"""Kling's field rules for each submit endpoint, checked before any quota is held.

The serializers only check; the body sent to Kling is the consumer's own, untouched (apart
from `external_task_id` and `callback_url`), so fields Kling adds later pass through.
"""

from dataclasses import dataclass
from typing import Any

from rest_framework import serializers

from klingrelay.errors import InvalidParameter

DEFAULT_MODEL = {
    "text2video": "kling-v1",
    "image2video": "kling-v1",
    "multi-image2video": "kling-v1-6",
    "omni-video": "kling-video-o1",
}
PROMPT_MAX = 2500


class _VideoFields(serializers.Serializer):
    model_name = serializers.CharField(required=False, max_length=100)
    mode = serializers.ChoiceField(choices=["std", "pro"], required=False)
    duration = serializers.ChoiceField(choices=["5", "10"], required=False)
    negative_prompt = serializers.CharField(required=False, allow_blank=True, max_length=PROMPT_MAX)
    cfg_scale = serializers.FloatField(required=False, min_value=0, max_value=1)
    camera_control = serializers.DictField(required=False)
    sound = serializers.ChoiceField(choices=["on", "off"], required=False)
    callback_url = serializers.URLField(required=False, allow_blank=True, max_length=2048)
    external_task_id = serializers.CharField(required=False, allow_blank=True, max_length=255)


class Text2VideoFields(_VideoFields):
    prompt = serializers.CharField(max_length=PROMPT_MAX)
    aspect_ratio = serializers.ChoiceField(choices=["16:9", "9:16", "1:1"], required=False)


class Image2VideoFields(_VideoFields):
    image = serializers.CharField(required=False, allow_blank=True)
    image_tail = serializers.CharField(required=False, allow_blank=True)
    prompt = serializers.CharField(required=False, allow_blank=True, max_length=PROMPT_MAX)
    static_mask = serializers.CharField(required=False, allow_blank=True)
    dynamic_masks = serializers.ListField(required=False, child=serializers.DictField())

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("image") and not attrs.get("image_tail"):
            raise serializers.ValidationError({"image": "image or image_tail is required."})
        return attrs


class _ImageListItem(serializers.Serializer):
    image = serializers.CharField()


class MultiImage2VideoFields(_VideoFields):
    image_list = _ImageListItem(many=True, min_length=1, max_length=4)
    prompt = serializers.CharField(max_length=PROMPT_MAX)
    aspect_ratio = serializers.ChoiceField(choices=["16:9", "9:16", "1:1"], required=False)


class OmniVideoFields(_VideoFields):
    prompt = serializers.CharField(max_length=PROMPT_MAX)
    duration = serializers.ChoiceField(choices=[str(s) for s in range(3, 11)], required=False)
    aspect_ratio = serializers.ChoiceField(choices=["16:9", "9:16", "1:1"], required=False)
    image_list = serializers.ListField(required=False, child=serializers.DictField())
    element_list = serializers.ListField(required=False, child=serializers.DictField())
    video_list = serializers.ListField(required=False, child=serializers.DictField())


SUBMIT_FIELDS: dict[str, type[_VideoFields]] = {
    "text2video": Text2VideoFields,
    "image2video": Image2VideoFields,
    "multi-image2video": MultiImage2VideoFields,
    "omni-video": OmniVideoFields,
}


@dataclass(frozen=True)
class SubmitRequest:
    """What the relay needs from a valid submit body to price, route and track it."""

    action: str
    model_name: str
    mode: str
    duration: str
    sound: str
    external_task_id: str
    callback_url: str


def _first_error(errors: Any, path: str = "") -> str:
    if isinstance(errors, dict):
        field, value = next(iter(errors.items()))
        label = path if field == "non_field_errors" else f"{path}.{field}" if path else field
        return _first_error(value, label)
    if isinstance(errors, list):
        for index, item in enumerate(errors):
            if item:
                if isinstance(item, dict):
                    return _first_error(item, f"{path}[{index}]")
                return _first_error(item, path)
    return f"{path}: {errors}" if path else str(errors)


def validate_submit_body(action: str, body: Any) -> SubmitRequest:
    """Check a submit body with Kling's rules; raise InvalidParameter naming the field."""
    if not isinstance(body, dict):
        raise InvalidParameter("Request body must be a JSON object", code=1200)
    fields = SUBMIT_FIELDS[action](data=body)
    if not fields.is_valid():
        raise InvalidParameter(_first_error(fields.errors))
    data = fields.validated_data
    return SubmitRequest(
        action=action,
        model_name=data.get("model_name") or DEFAULT_MODEL[action],
        mode=data.get("mode") or "std",
        duration=data.get("duration") or "5",
        sound=data.get("sound") or "",
        external_task_id=data.get("external_task_id") or "",
        callback_url=data.get("callback_url") or "",
    )
