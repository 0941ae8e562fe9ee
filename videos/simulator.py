"""A local stand-in for Kling's video API ("the simulator").

It speaks the wire protocol in docs/kling-protocol.md: JWT-authenticated `/v1/videos/...`
endpoints answering in Kling's envelope, tasks that move submitted → processing →
succeed/failed on a clock, callbacks POSTed to `callback_url` with retries, and video files
served under `/media/`. Everything lives in memory; it never touches the relay's database,
and it imports nothing from Django so it can run in any process.

Tests and scripts drive it from Python (`KlingSimulator.faults`, `advance()`, `tasks()`) or,
from another process, over HTTP under `/_sim/` (no auth).
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import heapq
import hmac
import json
import logging
import re
import secrets
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests

logger = logging.getLogger("klingsim")

DEFAULT_ACCESS_KEY = "sim-access-key"
DEFAULT_SECRET_KEY = "sim-secret-key-for-local-testing-only"  # noqa: S105 - a public demo key, never a real secret
FAIL_MARKER = "SIMULATE_FAILURE"
FAILURE_MESSAGE = "Failure to pass the risk control system"

# Seconds (divided by `speed`) a task spends in each non-final status.
SUBMITTED_SECONDS = 2.0
PROCESSING_SECONDS = 6.0

# Clock skew tolerated on `exp` and `nbf`; Kling's own clients sign with nbf = now - 5 s.
JWT_LEEWAY_SECONDS = 5

# Waits before callback retries 1..3 (divided by `speed`, never below the minimum).
CALLBACK_RETRY_DELAYS = (0.5, 1.0, 2.0)
CALLBACK_MIN_DELAY = 0.05
CALLBACK_TIMEOUT = (3.05, 10.0)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_PROMPT_CHARS = 2500

STATUS_SUBMITTED = "submitted"
STATUS_PROCESSING = "processing"
STATUS_SUCCEED = "succeed"
STATUS_FAILED = "failed"
FINAL_STATUSES = frozenset({STATUS_SUCCEED, STATUS_FAILED})

ERROR_MESSAGES = {
    1000: "Authentication failed",
    1001: "Authorization is empty",
    1002: "Authorization is invalid",
    1003: "Authorization is not yet valid",
    1004: "Authorization has expired",
    1100: "Account exception",
    1101: "Account in arrears",
    1102: "Resource pack exhausted or expired",
    1103: "No permission to access the requested resource",
    1200: "Invalid request parameters",
    1201: "Invalid parameter",
    1202: "Method not supported",
    1203: "Requested resource does not exist",
    1300: "Platform policy triggered",
    1301: "Content security policy triggered",
    1302: "API request rate limit exceeded",
    1303: "Concurrency or QPS exceeds the limit",
    1304: "IP not in the allow-list",
    5000: "Server internal error",
    5001: "Server temporarily unavailable",
    5002: "Server internal timeout",
}


# --- a tiny, valid MP4 --------------------------------------------------------------------
#
# One 16x16 H.264 frame coded as a single I_PCM macroblock (raw samples, so no entropy coder
# is needed), wrapped in ftyp + moov(mvhd, trak) + mdat. Decoders play it as a grey second.


class _BitWriter:
    def __init__(self) -> None:
        self._bits: list[int] = []

    def bits(self, value: int, width: int) -> None:
        self._bits.extend((value >> shift) & 1 for shift in range(width - 1, -1, -1))

    def ue(self, value: int) -> None:
        coded = value + 1
        self.bits(0, coded.bit_length() - 1)
        self.bits(coded, coded.bit_length())

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align_with_zeros(self) -> None:
        while len(self._bits) % 8:
            self._bits.append(0)

    def rbsp_trailing_bits(self) -> None:
        self._bits.append(1)
        self.align_with_zeros()

    def to_bytes(self) -> bytes:
        return bytes(
            int("".join(map(str, self._bits[i : i + 8])), 2) for i in range(0, len(self._bits), 8)
        )


def _nal_unit(header: int, rbsp: bytes) -> bytes:
    escaped = bytearray([header])
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            escaped.append(3)
            zeros = 0
        escaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(escaped)


def _h264_parameter_sets() -> tuple[bytes, bytes]:
    sps = _BitWriter()
    sps.bits(66, 8)  # profile_idc: Baseline
    sps.bits(0xC0, 8)  # constraint_set0/1 (constrained baseline)
    sps.bits(10, 8)  # level_idc 1.0
    sps.ue(0)  # seq_parameter_set_id
    sps.ue(0)  # log2_max_frame_num_minus4
    sps.ue(2)  # pic_order_cnt_type
    sps.ue(1)  # max_num_ref_frames
    sps.bits(0, 1)  # gaps_in_frame_num_value_allowed_flag
    sps.ue(0)  # pic_width_in_mbs_minus1
    sps.ue(0)  # pic_height_in_map_units_minus1
    sps.bits(1, 1)  # frame_mbs_only_flag
    sps.bits(1, 1)  # direct_8x8_inference_flag
    sps.bits(0, 1)  # frame_cropping_flag
    sps.bits(0, 1)  # vui_parameters_present_flag
    sps.rbsp_trailing_bits()

    pps = _BitWriter()
    pps.ue(0)  # pic_parameter_set_id
    pps.ue(0)  # seq_parameter_set_id
    pps.bits(0, 1)  # entropy_coding_mode_flag: CAVLC
    pps.bits(0, 1)  # bottom_field_pic_order_in_frame_present_flag
    pps.ue(0)  # num_slice_groups_minus1
    pps.ue(0)  # num_ref_idx_l0_default_active_minus1
    pps.ue(0)  # num_ref_idx_l1_default_active_minus1
    pps.bits(0, 1)  # weighted_pred_flag
    pps.bits(0, 2)  # weighted_bipred_idc
    pps.se(0)  # pic_init_qp_minus26
    pps.se(0)  # pic_init_qs_minus26
    pps.se(0)  # chroma_qp_index_offset
    pps.bits(0, 1)  # deblocking_filter_control_present_flag
    pps.bits(0, 1)  # constrained_intra_pred_flag
    pps.bits(0, 1)  # redundant_pic_cnt_present_flag
    pps.rbsp_trailing_bits()
    return _nal_unit(0x67, sps.to_bytes()), _nal_unit(0x68, pps.to_bytes())


def _h264_idr_frame() -> bytes:
    slice_ = _BitWriter()
    slice_.ue(0)  # first_mb_in_slice
    slice_.ue(7)  # slice_type: I (all slices)
    slice_.ue(0)  # pic_parameter_set_id
    slice_.bits(0, 4)  # frame_num
    slice_.ue(0)  # idr_pic_id
    slice_.bits(0, 1)  # no_output_of_prior_pics_flag
    slice_.bits(0, 1)  # long_term_reference_flag
    slice_.se(0)  # slice_qp_delta
    slice_.ue(25)  # mb_type: I_PCM
    slice_.align_with_zeros()
    for _ in range(16 * 16 + 2 * 8 * 8):  # luma, then Cb and Cr samples
        slice_.bits(0x80, 8)
    slice_.rbsp_trailing_bits()
    return _nal_unit(0x65, slice_.to_bytes())


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


_UNITY_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _build_sample_mp4() -> bytes:
    width = height = 16
    timescale = 1000
    duration = 1000
    sps, pps = _h264_parameter_sets()
    frame = _h264_idr_frame()
    sample = struct.pack(">I", len(frame)) + frame

    avcc = _box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),
        struct.pack(">H", len(sps)),
        sps,
        bytes([1]),
        struct.pack(">H", len(pps)),
        pps,
    )
    compressor = b"klingsim".ljust(31, b"\0")
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">HHH3I", 1, 0, 0, 0, 0, 0),
        struct.pack(">HHIII", width, height, 0x00480000, 0x00480000, 0),
        struct.pack(">HB", 1, len(b"klingsim")),
        compressor,
        struct.pack(">Hh", 0x0018, -1),
        avcc,
    )

    def moov(chunk_offset: int) -> bytes:
        stbl = _box(
            b"stbl",
            _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
            _full_box(b"stts", 0, 0, struct.pack(">III", 1, 1, duration)),
            _full_box(b"stss", 0, 0, struct.pack(">II", 1, 1)),
            _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, 1, 1)),
            _full_box(b"stsz", 0, 0, struct.pack(">III", 0, 1, len(sample))),
            _full_box(b"stco", 0, 0, struct.pack(">II", 1, chunk_offset)),
        )
        minf = _box(
            b"minf",
            _full_box(b"vmhd", 0, 1, struct.pack(">4H", 0, 0, 0, 0)),
            _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1))),
            stbl,
        )
        mdia = _box(
            b"mdia",
            _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, duration, 0x55C4, 0)),
            _full_box(b"hdlr", 0, 0, struct.pack(">I4s3I", 0, b"vide", 0, 0, 0), b"VideoHandler\0"),
            minf,
        )
        tkhd = _full_box(
            b"tkhd",
            0,
            0x3,  # enabled, in movie
            struct.pack(">IIIII", 0, 0, 1, 0, duration),
            struct.pack(">IIhhhH", 0, 0, 0, 0, 0, 0),
            _UNITY_MATRIX,
            struct.pack(">II", width << 16, height << 16),
        )
        mvhd = _full_box(
            b"mvhd",
            0,
            0,
            struct.pack(">IIIIIHH", 0, 0, timescale, duration, 0x00010000, 0x0100, 0),
            struct.pack(">II", 0, 0),
            _UNITY_MATRIX,
            bytes(24),
            struct.pack(">I", 2),
        )
        return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))

    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    header_size = len(ftyp) + len(moov(0)) + 8
    return ftyp + moov(header_size) + _box(b"mdat", sample)


SAMPLE_MP4: bytes = _build_sample_mp4()


# --- errors, faults, tasks ----------------------------------------------------------------


class KlingError(Exception):
    """An error answered in Kling's envelope with Kling's HTTP status and code."""

    def __init__(self, http_status: int, code: int, message: str | None = None) -> None:
        super().__init__(message or ERROR_MESSAGES.get(code, "Error"))
        self.http_status = http_status
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, "Error")


def _invalid(message: str) -> KlingError:
    return KlingError(400, 1201, message)


@dataclass(frozen=True)
class RequestFault:
    """What the fault injector decided for one API request."""

    hang_seconds: float = 0.0
    fail_status: int | None = None
    fail_code: int | None = None


class Faults:
    """Counters of injected faults; each API request or callback consumes at most one of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def fail_next(self, n: int = 1, status: int = 500, code: int = 5000) -> None:
        _require_count(n)
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        with self._lock:
            self._fail_remaining = n
            self._fail_status = status
            self._fail_code = code

    def timeout_next(self, n: int = 1, seconds: float = 30.0) -> None:
        _require_count(n)
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        with self._lock:
            self._timeout_remaining = n
            self._timeout_seconds = float(seconds)

    def drop_callbacks(self, n: int = 1) -> None:
        _require_count(n)
        with self._lock:
            self._drop_remaining = n

    def duplicate_callbacks(self, n: int = 1) -> None:
        _require_count(n)
        with self._lock:
            self._duplicate_remaining = n

    def reset(self) -> None:
        with self._lock:
            self._fail_remaining = 0
            self._fail_status = 500
            self._fail_code = 5000
            self._timeout_remaining = 0
            self._timeout_seconds = 30.0
            self._drop_remaining = 0
            self._duplicate_remaining = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "fail_next": self._fail_remaining,
                "status": self._fail_status,
                "code": self._fail_code,
                "timeout_next": self._timeout_remaining,
                "seconds": self._timeout_seconds,
                "drop_callbacks": self._drop_remaining,
                "duplicate_callbacks": self._duplicate_remaining,
            }

    def take_request_fault(self) -> RequestFault:
        with self._lock:
            hang = 0.0
            if self._timeout_remaining:
                self._timeout_remaining -= 1
                hang = self._timeout_seconds
            if self._fail_remaining:
                self._fail_remaining -= 1
                return RequestFault(hang, self._fail_status, self._fail_code)
            return RequestFault(hang)

    def take_callback_fault(self) -> str | None:
        """Return "drop", "duplicate" or None for the next callback."""
        with self._lock:
            if self._drop_remaining:
                self._drop_remaining -= 1
                return "drop"
            if self._duplicate_remaining:
                self._duplicate_remaining -= 1
                return "duplicate"
            return None


def _require_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError("count must be a non-negative integer")


@dataclass
class _Task:
    task_id: str
    access_key: str
    action: str
    request: dict[str, Any]
    seq: int
    created_at: int
    updated_at: int
    next_due: float | None = None
    external_task_id: str | None = None
    callback_url: str | None = None
    parent_video: dict[str, str] | None = None
    status: str = STATUS_SUBMITTED
    status_msg: str = ""
    videos: list[dict[str, str]] = field(default_factory=list)
    unit_deduction: str | None = None

    def task_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.external_task_id is not None:
            info["external_task_id"] = self.external_task_id
        if self.parent_video is not None:
            info["parent_video"] = dict(self.parent_video)
        return info

    def to_kling(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.status,
            "task_status_msg": self.status_msg,
            "task_info": self.task_info(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.status == STATUS_SUCCEED:
            data["task_result"] = {"videos": copy.deepcopy(self.videos)}
            data["final_unit_deduction"] = self.unit_deduction
        return data


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- request validation -------------------------------------------------------------------

SUBMIT_ACTIONS = (
    "text2video",
    "image2video",
    "multi-image2video",
    "omni-video",
    "video-extend",
    "lip-sync",
    "effects",
)
STANDARD_DURATIONS = ("5", "10")
DURATIONS_BY_ACTION: dict[str, tuple[str, ...]] = {
    "text2video": STANDARD_DURATIONS,
    "image2video": STANDARD_DURATIONS,
    "multi-image2video": STANDARD_DURATIONS,
    "omni-video": tuple(str(seconds) for seconds in range(3, 11)),
}
MODES = ("std", "pro")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
PRO_UNIT_MULTIPLIER = 3.5
DEFAULT_SECONDS = 5.0
EXTEND_SECONDS = 5.0  # what one video-extend adds to its parent video


def _optional_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    return value


def _required_string(body: Mapping[str, Any], name: str) -> str:
    value = _optional_string(body, name)
    if not value or not value.strip():
        raise _invalid(f"{name} is required")
    return value


def _validate_choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> None:
    value = body.get(name)
    if value is not None and value not in choices:
        raise _invalid(f"{name} must be one of: {', '.join(choices)}")


def _validate_common(action: str, body: Mapping[str, Any]) -> None:
    for name in ("prompt", "negative_prompt"):
        text = _optional_string(body, name)
        if text is not None and len(text) > MAX_PROMPT_CHARS:
            raise _invalid(f"{name} must be at most {MAX_PROMPT_CHARS} characters")
    _optional_string(body, "model_name")
    _validate_choice(body, "mode", MODES)
    _validate_choice(body, "aspect_ratio", ASPECT_RATIOS)
    if action in DURATIONS_BY_ACTION:
        duration = body.get("duration")
        # Kling documents a string; an integer is tolerated the way lenient gateways do.
        if isinstance(duration, int) and not isinstance(duration, bool):
            duration = str(duration)
        if duration is not None and duration not in DURATIONS_BY_ACTION[action]:
            choices = DURATIONS_BY_ACTION[action]
            raise _invalid(f"duration must be one of: {', '.join(choices)}")
    cfg_scale = body.get("cfg_scale")
    if cfg_scale is not None and (
        isinstance(cfg_scale, bool)
        or not isinstance(cfg_scale, int | float)
        or not 0 <= cfg_scale <= 1
    ):
        raise _invalid("cfg_scale must be a number between 0 and 1")
    callback_url = _optional_string(body, "callback_url")
    if callback_url is not None:
        parts = urlsplit(callback_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _invalid("callback_url must be an http(s) URL")
    external_task_id = _optional_string(body, "external_task_id")
    if external_task_id is not None and not external_task_id:
        raise _invalid("external_task_id must not be empty")


def _validate_action_fields(action: str, body: Mapping[str, Any]) -> None:
    if action in ("text2video", "omni-video"):
        _required_string(body, "prompt")
    elif action == "image2video":
        image = _optional_string(body, "image")
        image_tail = _optional_string(body, "image_tail")
        if not image and not image_tail:
            raise _invalid("image or image_tail is required")
    elif action == "multi-image2video":
        image_list = body.get("image_list")
        if not isinstance(image_list, list) or not 1 <= len(image_list) <= 4:
            raise _invalid("image_list must contain 1 to 4 items")
        for item in image_list:
            if (
                not isinstance(item, dict)
                or not item.get("image")
                or not isinstance(item["image"], str)
            ):
                raise _invalid("each image_list item needs an image")
        _required_string(body, "prompt")
    elif action == "video-extend":
        _required_string(body, "video_id")


def _requested_seconds(action: str, body: Mapping[str, Any]) -> float:
    duration = body.get("duration")
    if action in DURATIONS_BY_ACTION and duration is not None:
        return float(duration)  # validated at submit
    return DEFAULT_SECONDS


def _format_number(value: float) -> str:
    return f"{round(value, 2):g}"


def _unit_deduction(action: str, body: Mapping[str, Any]) -> str:
    """Units charged: 1 per 5 s in std mode, 3.5 times that in pro mode."""
    units = _requested_seconds(action, body) / 5
    if body.get("mode") == "pro":
        units *= PRO_UNIT_MULTIPLIER
    return _format_number(units)


# --- JWT ------------------------------------------------------------------------------------


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _verify_jwt(header_value: str | None, accounts: Mapping[str, str], now: float) -> str:
    """Check a Kling Authorization header and return the access key it was issued for.

    HS256 is verified with hmac directly: PyJWT warns on every short secret, and Kling's
    demo keys are short.
    """
    if not header_value or not header_value.strip():
        raise KlingError(401, 1001)
    scheme, _, token = header_value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise KlingError(401, 1002)
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = json.loads(_b64url_decode(header_b64))
        claims = json.loads(_b64url_decode(payload_b64))
        signature = _b64url_decode(signature_b64)
    except (ValueError, binascii.Error):
        raise KlingError(401, 1002) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise KlingError(401, 1002)
    if header.get("alg") != "HS256":
        raise KlingError(401, 1002)
    access_key = claims.get("iss")
    secret_key = accounts.get(access_key) if isinstance(access_key, str) else None
    if secret_key is None:
        raise KlingError(401, 1002)
    signing_input = f"{header_b64}.{payload_b64}".encode()
    expected = hmac.new(secret_key.encode(), signing_input, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise KlingError(401, 1002)

    def numeric_claim(name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KlingError(401, 1002)
        return float(value)

    expires_at = numeric_claim("exp")
    not_before = numeric_claim("nbf")
    if expires_at is None:
        raise KlingError(401, 1002)
    if not_before is not None and now + JWT_LEEWAY_SECONDS < not_before:
        raise KlingError(401, 1003)
    if now - JWT_LEEWAY_SECONDS >= expires_at:
        raise KlingError(401, 1004)
    return access_key


# --- callbacks --------------------------------------------------------------------------------

CallbackAttempt = tuple[str, int | str, dict[str, Any]]


class _CallbackDispatcher:
    """Posts callbacks from worker threads: in order per task, concurrently across tasks."""

    def __init__(self, faults: Faults, stopping: threading.Event, speed: float) -> None:
        self._faults = faults
        self._stopping = stopping
        self._speed = speed
        self._lock = threading.Lock()
        self._attempts_changed = threading.Condition(self._lock)
        self._attempts: list[CallbackAttempt] = []
        self._queues: dict[str, deque[tuple[str, dict[str, Any]]]] = {}

    def enqueue(self, task_id: str, url: str, body: dict[str, Any]) -> None:
        fault = self._faults.take_callback_fault()
        if fault == "drop":
            logger.info("dropping callback for task %s (fault injected)", task_id)
            return
        copies = 2 if fault == "duplicate" else 1
        with self._lock:
            queue = self._queues.get(task_id)
            start_worker = queue is None
            if queue is None:
                queue = self._queues[task_id] = deque()
            queue.extend((url, body) for _ in range(copies))
        if start_worker:
            worker = threading.Thread(
                target=self._drain, args=(task_id,), name=f"klingsim-callback-{task_id}"
            )
            worker.daemon = True
            worker.start()

    def attempts(self) -> list[CallbackAttempt]:
        with self._lock:
            return [(url, result, copy.deepcopy(body)) for url, result, body in self._attempts]

    def wait_for_attempts(self, count: int, timeout: float) -> list[CallbackAttempt]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._attempts) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._attempts_changed.wait(remaining)
        return self.attempts()

    def _drain(self, task_id: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[task_id]
                if not queue or self._stopping.is_set():
                    del self._queues[task_id]
                    return
                url, body = queue.popleft()
            self._deliver(url, body)

    def _deliver(self, url: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        for attempt in range(1 + len(CALLBACK_RETRY_DELAYS)):
            if self._stopping.is_set():
                return
            result: int | str
            try:
                response = requests.post(
                    url,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=CALLBACK_TIMEOUT,
                )
                result = response.status_code
                delivered = 200 <= response.status_code < 300
            except requests.RequestException as exc:
                result = f"{type(exc).__name__}: {exc}"
                delivered = False
            with self._lock:
                self._attempts.append((url, result, body))
                self._attempts_changed.notify_all()
            # Only the host: callback URLs usually carry the receiver's token.
            host = urlsplit(url).netloc
            logger.info("callback for task %s to %s: %s", body["task_id"], host, result)
            if delivered or attempt == len(CALLBACK_RETRY_DELAYS):
                return
            delay = max(CALLBACK_MIN_DELAY, CALLBACK_RETRY_DELAYS[attempt] / self._speed)
            if self._stopping.wait(delay):
                return


# --- the simulator ----------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json_response(status: int, data: Any) -> _Response:
    return _Response(status, json.dumps(data, ensure_ascii=False).encode())


def _kling_success(data: Any) -> _Response:
    envelope = {"code": 0, "message": "SUCCEED", "request_id": str(uuid.uuid4()), "data": data}
    return _json_response(200, envelope)


def _kling_error(error: KlingError) -> _Response:
    envelope = {"code": error.code, "message": error.message, "request_id": str(uuid.uuid4())}
    return _json_response(error.http_status, envelope)


_MEDIA_PATH = re.compile(r"^/media/(?P<video_id>[A-Za-z0-9-]+)\.mp4$")


class KlingSimulator:
    """An in-memory Kling video API on a local port; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Mapping[str, str] | None = None,
        speed: float = 1.0,
        public_url: str | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.host = host
        self.port = port
        self.accounts: dict[str, str] = dict(
            accounts if accounts is not None else {DEFAULT_ACCESS_KEY: DEFAULT_SECRET_KEY}
        )
        if not self.accounts:
            raise ValueError("at least one account is needed")
        self.speed = float(speed)
        self._public_url = public_url.rstrip("/") if public_url else None
        self.faults = Faults()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._clock = threading.Condition(self._lock)
        self._tasks: dict[str, _Task] = {}
        self._by_external_id: dict[tuple[str, str], str] = {}
        self._videos: dict[str, tuple[str, dict[str, str]]] = {}
        self._due: list[tuple[float, int, str]] = []  # heap of (monotonic time, seq, task_id)
        self._seq = 0
        self._callbacks = _CallbackDispatcher(self.faults, self._stopping, self.speed)
        self._server: _SimulatorServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # lifecycle

    def start(self) -> KlingSimulator:
        if self._server is not None or self._stopped:
            raise RuntimeError("a simulator can be started only once")
        self._server = _SimulatorServer((self.host, self.port), self)
        self.port = self._server.server_address[1]
        # A short poll interval keeps stop() quick: shutdown() waits for the next poll.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        for target, name in ((serve, "http"), (self._run_clock, "clock")):
            thread = threading.Thread(target=target, name=f"klingsim-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("Kling simulator listening on %s (speed %s)", self.url, self.speed)
        return self

    def stop(self) -> None:
        with self._clock:
            if self._stopped:
                return
            self._stopped = True
            self._stopping.set()
            self._clock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        logger.info("Kling simulator stopped")

    def __enter__(self) -> KlingSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._public_url:
            return self._public_url
        # Links handed to clients must name a reachable host, not the wildcard bind address.
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    # inspection and control

    def tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [task.to_kling() for task in self._tasks.values()]

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return task.to_kling() if task else None

    def advance(self, task_id: str | None = None) -> list[dict[str, Any]]:
        """Move one task (or every unfinished task) to its next status now.

        Returns the tasks that moved. Raises KeyError for an unknown task_id.
        """
        with self._clock:
            if task_id is None:
                targets = [t for t in self._tasks.values() if t.status not in FINAL_STATUSES]
            else:
                if task_id not in self._tasks:
                    raise KeyError(task_id)
                task = self._tasks[task_id]
                targets = [] if task.status in FINAL_STATUSES else [task]
            return [self._transition_locked(task) for task in targets]

    @property
    def callback_log(self) -> list[CallbackAttempt]:
        return self._callbacks.attempts()

    def callback_attempts(self) -> list[CallbackAttempt]:
        """Every callback attempt so far as (url, HTTP status or error text, body)."""
        return self._callbacks.attempts()

    def wait_for_callbacks(self, count: int, timeout: float = 5.0) -> list[CallbackAttempt]:
        """Wait until at least `count` callback attempts were made (or timeout); return them."""
        return self._callbacks.wait_for_attempts(count, timeout)

    # the clock

    def _run_clock(self) -> None:
        with self._clock:
            while not self._stopping.is_set():
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    due, _, task_id = heapq.heappop(self._due)
                    task = self._tasks[task_id]
                    # Entries left behind by advance() no longer match the task's schedule.
                    if task.next_due != due:
                        continue
                    try:
                        self._transition_locked(task)
                    except Exception:
                        # One broken task must not stop the clock for every other task.
                        logger.exception("cannot advance task %s", task_id)
                        task.next_due = None
                self._clock.wait(self._due[0][0] - now if self._due else None)

    def _schedule_locked(self, task: _Task, seconds: float) -> None:
        task.next_due = time.monotonic() + seconds / self.speed
        heapq.heappush(self._due, (task.next_due, task.seq, task.task_id))
        self._clock.notify_all()

    def _transition_locked(self, task: _Task) -> dict[str, Any]:
        if task.status == STATUS_SUBMITTED:
            task.status = STATUS_PROCESSING
            self._schedule_locked(task, PROCESSING_SECONDS)
        elif FAIL_MARKER in str(task.request.get("prompt") or ""):
            task.status = STATUS_FAILED
            task.status_msg = FAILURE_MESSAGE
            task.next_due = None
        else:
            self._succeed_locked(task)
        task.updated_at = max(_now_ms(), task.updated_at + 1)
        snapshot = task.to_kling()
        logger.info("task %s is now %s", task.task_id, task.status)
        if task.callback_url:
            # Queued under the lock so callbacks of one task keep the order of its transitions.
            self._callbacks.enqueue(task.task_id, task.callback_url, task.to_kling())
        return snapshot

    def _succeed_locked(self, task: _Task) -> None:
        if task.parent_video is not None:
            duration = float(task.parent_video["duration"]) + EXTEND_SECONDS
        else:
            duration = _requested_seconds(task.action, task.request)
        video_id = str(uuid.uuid4())
        video = {
            "id": video_id,
            "url": f"{self.url}/media/{video_id}.mp4",
            "duration": _format_number(duration),
        }
        task.status = STATUS_SUCCEED
        task.status_msg = ""
        task.videos = [video]
        task.unit_deduction = _unit_deduction(task.action, task.request)
        task.next_due = None
        self._videos[video_id] = (task.task_id, video)

    # Kling's API

    def _submit(self, access_key: str, action: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise KlingError(400, 1200, "Request body must be a JSON object")
        _validate_common(action, body)
        _validate_action_fields(action, body)
        external_task_id = body.get("external_task_id") or None
        with self._clock:
            parent_video = None
            if action == "video-extend":
                parent_video = self._parent_video_locked(access_key, body["video_id"])
            if external_task_id is not None and (access_key, external_task_id) in (
                self._by_external_id
            ):
                raise _invalid(f"external_task_id {external_task_id!r} already exists")
            now = _now_ms()
            self._seq += 1
            task = _Task(
                task_id=self._new_task_id_locked(),
                access_key=access_key,
                action=action,
                request=copy.deepcopy(body),
                seq=self._seq,
                created_at=now,
                updated_at=now,
                external_task_id=external_task_id,
                callback_url=body.get("callback_url") or None,
                parent_video=parent_video,
            )
            self._tasks[task.task_id] = task
            if external_task_id is not None:
                self._by_external_id[(access_key, external_task_id)] = task.task_id
            self._schedule_locked(task, SUBMITTED_SECONDS)
            logger.info("task %s submitted (%s)", task.task_id, action)
            data = task.to_kling()
        submit_keys = ("task_id", "task_status", "task_info", "created_at", "updated_at")
        return {key: data[key] for key in submit_keys}

    def _parent_video_locked(self, access_key: str, video_id: str) -> dict[str, str]:
        found = self._videos.get(video_id)
        if found is None or self._tasks[found[0]].access_key != access_key:
            raise _invalid(f"video_id {video_id!r} is not a video of a succeeded task")
        return dict(found[1])

    def _new_task_id_locked(self) -> str:
        while True:
            task_id = str(10**17 + secrets.randbelow(9 * 10**17))
            if task_id not in self._tasks:
                return task_id

    def _query(self, access_key: str, action: str, task_id: str) -> dict[str, Any]:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.access_key != access_key or task.action != action:
                # Kling also lets a client look a task up by its external_task_id.
                by_external = self._by_external_id.get((access_key, task_id))
                task = self._tasks.get(by_external) if by_external else None
            if task is None or task.access_key != access_key or task.action != action:
                raise KlingError(404, 1203, "Task not found")
            return task.to_kling()

    def _list(self, access_key: str, action: str, query: dict[str, list[str]]) -> list[Any]:
        page_num = _int_param(query, "pageNum", 1)
        page_size = _int_param(query, "pageSize", 30)
        if page_num < 1:
            raise _invalid("pageNum must be at least 1")
        if not 1 <= page_size <= 500:
            raise _invalid("pageSize must be between 1 and 500")
        external_task_id = (query.get("external_task_id") or [None])[0]
        with self._lock:
            matching = [
                task
                for task in self._tasks.values()
                if task.access_key == access_key
                and task.action == action
                and (external_task_id is None or task.external_task_id == external_task_id)
            ]
            matching.sort(key=lambda task: task.seq, reverse=True)
            start = (page_num - 1) * page_size
            return [task.to_kling() for task in matching[start : start + page_size]]

    # HTTP dispatch

    def _serve(
        self, method: str, target: str, authorization: str | None, body: bytes
    ) -> tuple[_Response, float]:
        """Answer one HTTP request; also return how long to hang before answering."""
        parts = urlsplit(target)
        path = parts.path
        if path == "/_sim" or path.startswith("/_sim/"):
            return self._serve_control(method, path, body), 0.0
        if path.startswith("/media/"):
            return self._serve_media(method, path), 0.0

        fault = self.faults.take_request_fault()
        if fault.fail_status is not None:
            error = KlingError(fault.fail_status, fault.fail_code or 5000)
            return _kling_error(error), fault.hang_seconds
        try:
            data = self._serve_api(method, path, parts.query, authorization, body)
        except KlingError as error:
            return _kling_error(error), fault.hang_seconds
        return _kling_success(data), fault.hang_seconds

    def _serve_media(self, method: str, path: str) -> _Response:
        media = _MEDIA_PATH.match(path)
        if media and method in ("GET", "HEAD"):
            with self._lock:
                known = media["video_id"] in self._videos
            if known:
                return _Response(200, SAMPLE_MP4, "video/mp4")
        return _json_response(404, {"error": "not found"})

    def _serve_api(
        self, method: str, path: str, query: str, authorization: str | None, body: bytes
    ) -> Any:
        if not path.startswith("/v1/"):
            raise KlingError(404, 1202)
        access_key = _verify_jwt(authorization, self.accounts, time.time())
        segments = path.split("/")[1:]
        if len(segments) not in (3, 4) or segments[1] != "videos":
            raise KlingError(404, 1202)
        action = segments[2]
        if action not in SUBMIT_ACTIONS:
            raise KlingError(404, 1202)
        if len(segments) == 3 and method == "POST":
            try:
                payload = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError):
                raise KlingError(400, 1200, "Request body must be a JSON object") from None
            return self._submit(access_key, action, payload)
        if len(segments) == 3 and method == "GET":
            return self._list(access_key, action, parse_qs(query))
        if len(segments) == 4 and method == "GET" and segments[3]:
            return self._query(access_key, action, unquote(segments[3]))
        raise KlingError(404, 1202)

    def _serve_control(self, method: str, path: str, body: bytes) -> _Response:
        try:
            payload = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError):
            return _json_response(400, {"ok": False, "error": "body must be JSON"})
        if not isinstance(payload, dict):
            return _json_response(400, {"ok": False, "error": "body must be a JSON object"})
        route = (method, path.rstrip("/"))
        if route == ("GET", "/_sim/health"):
            return _json_response(200, {"ok": True, "url": self.url, "speed": self.speed})
        if route == ("GET", "/_sim/tasks"):
            return _json_response(200, self.tasks())
        if method == "GET" and path.startswith("/_sim/tasks/"):
            task = self.get_task(path.removeprefix("/_sim/tasks/"))
            if task is None:
                return _json_response(404, {"ok": False, "error": "unknown task"})
            return _json_response(200, task)
        if route == ("GET", "/_sim/callbacks"):
            attempts = [
                {"url": url, "result": result, "body": body}
                for url, result, body in self.callback_attempts()
            ]
            return _json_response(200, attempts)
        if route == ("GET", "/_sim/faults"):
            return _json_response(200, self.faults.snapshot())
        if route == ("POST", "/_sim/faults"):
            try:
                _apply_fault_request(self.faults, payload)
            except (TypeError, ValueError) as exc:
                return _json_response(400, {"ok": False, "error": str(exc)})
            return _json_response(200, {"ok": True, "faults": self.faults.snapshot()})
        if route == ("POST", "/_sim/advance"):
            task_id = payload.get("task_id")
            try:
                moved = self.advance(str(task_id) if task_id is not None else None)
            except KeyError:
                return _json_response(404, {"ok": False, "error": "unknown task"})
            return _json_response(200, {"ok": True, "advanced": moved})
        return _json_response(404, {"ok": False, "error": "unknown control endpoint"})


_FAULT_KEYS = {
    "reset",
    "fail_next",
    "status",
    "code",
    "timeout_next",
    "seconds",
    "drop_callbacks",
    "duplicate_callbacks",
}


def _apply_fault_request(faults: Faults, payload: Mapping[str, Any]) -> None:
    unknown = set(payload) - _FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault keys: {', '.join(sorted(unknown))}")
    if payload.get("reset"):
        faults.reset()
    if "fail_next" in payload:
        faults.fail_next(
            payload["fail_next"], status=payload.get("status", 500), code=payload.get("code", 5000)
        )
    if "timeout_next" in payload:
        faults.timeout_next(payload["timeout_next"], seconds=float(payload.get("seconds", 30.0)))
    if "drop_callbacks" in payload:
        faults.drop_callbacks(payload["drop_callbacks"])
    if "duplicate_callbacks" in payload:
        faults.duplicate_callbacks(payload["duplicate_callbacks"])


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[0])
    except ValueError:
        raise _invalid(f"{name} must be an integer") from None


# --- HTTP plumbing ----------------------------------------------------------------------------


class _SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 resets connections under a benchmark's bursts.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], simulator: KlingSimulator) -> None:
        self.simulator = simulator
        super().__init__(address, _RequestHandler)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _SimulatorServer
    server_version = "klingsim/1.0"

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        simulator = self.server.simulator
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(_kling_error(KlingError(400, 1200, "Request body is too large")))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        try:
            response, hang_seconds = simulator._serve(
                self.command, self.path, self.headers.get("Authorization"), body
            )
        except Exception:
            logger.exception("simulator failed on %s %s", self.command, urlsplit(self.path).path)
            response, hang_seconds = _kling_error(KlingError(500, 5000)), 0.0
        # A request hanging on an injected timeout is abandoned unanswered when the simulator stops.
        if hang_seconds and simulator._stopping.wait(hang_seconds):
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


__all__ = [
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_SECRET_KEY",
    "FAIL_MARKER",
    "SAMPLE_MP4",
    "Faults",
    "KlingError",
    "KlingSimulator",
]
