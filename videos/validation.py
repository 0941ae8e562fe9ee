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
    "effects": "kling-v1-6",
}
# Tasks without a model of their own are priced under these names (see docs/pricing.md).
LIP_SYNC_PRICE_MODEL = "kling-lip-sync"
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


class VideoExtendFields(serializers.Serializer):
    video_id = serializers.CharField(max_length=128)
    prompt = serializers.CharField(required=False, allow_blank=True, max_length=PROMPT_MAX)
    negative_prompt = serializers.CharField(required=False, allow_blank=True, max_length=PROMPT_MAX)
    cfg_scale = serializers.FloatField(required=False, min_value=0, max_value=1)
    callback_url = serializers.URLField(required=False, allow_blank=True, max_length=2048)
    external_task_id = serializers.CharField(required=False, allow_blank=True, max_length=255)


class _LipSyncInput(serializers.Serializer):
    video_id = serializers.CharField(required=False, allow_blank=True, max_length=128)
    video_url = serializers.URLField(required=False, allow_blank=True, max_length=2048)
    mode = serializers.ChoiceField(choices=["text2video", "audio2video"])
    text = serializers.CharField(required=False, allow_blank=True, max_length=120)
    voice_id = serializers.CharField(required=False, allow_blank=True)
    voice_language = serializers.ChoiceField(choices=["zh", "en"], required=False)
    voice_speed = serializers.FloatField(required=False, min_value=0.8, max_value=2.0)
    audio_type = serializers.ChoiceField(choices=["file", "url"], required=False)
    audio_file = serializers.CharField(required=False, allow_blank=True)
    audio_url = serializers.CharField(required=False, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("video_id") and not attrs.get("video_url"):
            raise serializers.ValidationError({"video_id": "video_id or video_url is required."})
        if attrs["mode"] == "text2video":
            for field in ("text", "voice_id"):
                if not attrs.get(field):
                    raise serializers.ValidationError({field: "required when mode is text2video."})
        else:
            audio_type = attrs.get("audio_type")
            if audio_type is None:
                raise serializers.ValidationError(
                    {"audio_type": "required when mode is audio2video."}
                )
            field = "audio_file" if audio_type == "file" else "audio_url"
            if not attrs.get(field):
                raise serializers.ValidationError(
                    {field: f"required when audio_type is {audio_type}."}
                )
        return attrs


class LipSyncFields(serializers.Serializer):
    input = _LipSyncInput()
    callback_url = serializers.URLField(required=False, allow_blank=True, max_length=2048)
    external_task_id = serializers.CharField(required=False, allow_blank=True, max_length=255)


class _EffectsInput(serializers.Serializer):
    model_name = serializers.CharField(required=False, max_length=100)
    mode = serializers.ChoiceField(choices=["std", "pro"], required=False)
    duration = serializers.ChoiceField(choices=["5", "10"], required=False)
    image = serializers.CharField(required=False, allow_blank=True)
    images = serializers.ListField(
        required=False, child=serializers.CharField(), min_length=1, max_length=2
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("image") and not attrs.get("images"):
            raise serializers.ValidationError({"image": "image or images is required."})
        return attrs


class EffectsFields(serializers.Serializer):
    effect_scene = serializers.CharField(max_length=100)
    input = _EffectsInput()
    callback_url = serializers.URLField(required=False, allow_blank=True, max_length=2048)
    external_task_id = serializers.CharField(required=False, allow_blank=True, max_length=255)


SUBMIT_FIELDS: dict[str, type[serializers.Serializer]] = {
    "text2video": Text2VideoFields,
    "image2video": Image2VideoFields,
    "multi-image2video": MultiImage2VideoFields,
    "omni-video": OmniVideoFields,
    "video-extend": VideoExtendFields,
    "lip-sync": LipSyncFields,
    "effects": EffectsFields,
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
    # A video of an earlier task this one works on (video-extend, lip-sync): it lives in
    # one Kling account, so the task must go to that task's channel.
    parent_video_id: str = ""


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
    common = {
        "action": action,
        "external_task_id": data.get("external_task_id") or "",
        "callback_url": data.get("callback_url") or "",
    }
    if action == "video-extend":  # priced and routed from the parent task (see services)
        return SubmitRequest(
            model_name="",
            mode="",
            duration="5",
            sound="",
            parent_video_id=data["video_id"],
            **common,
        )
    if action == "lip-sync":
        return SubmitRequest(
            model_name=LIP_SYNC_PRICE_MODEL,
            mode="std",
            duration="5",
            sound="",
            parent_video_id=data["input"].get("video_id") or "",
            **common,
        )
    if action == "effects":
        effect_input = data["input"]
        return SubmitRequest(
            model_name=effect_input.get("model_name") or DEFAULT_MODEL[action],
            mode=effect_input.get("mode") or "std",
            duration=effect_input.get("duration") or "5",
            sound="",
            **common,
        )
    return SubmitRequest(
        model_name=data.get("model_name") or DEFAULT_MODEL[action],
        mode=data.get("mode") or "std",
        duration=data.get("duration") or "5",
        sound=data.get("sound") or "",
        **common,
    )
