"""The relay's flows: submit a task, query it, receive Kling's callback.

Each flow reads top to bottom. Network calls to Kling never happen inside a transaction
that holds a row lock; state changes go through videos.transitions.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from billing.models import ApiKey
from billing.services import price_for, reserve_quota
from channels_app.client import UpstreamResponse, UpstreamUnavailable, send_to_kling
from channels_app.models import Channel
from channels_app.routing import candidate_channels, classify_upstream_answer
from klingrelay.errors import InvalidParameter, RelayError, ResourceNotFound, ServiceUnavailable
from klingrelay.jsonbody import parse_json
from klingrelay.memo import BoundedCache
from klingrelay.metrics import count_callback
from klingrelay.request_trace import note_task

from .consumer_callbacks import check_callback_url
from .models import CallbackEvent, TaskStatus, VideoTask
from .transitions import apply_upstream_state, fail_task
from .validation import SubmitRequest, validate_submit_body
from .wire import (
    consumer_task_object,
    passthrough,
    task_answer_from_row,
    task_envelope,
    task_object_from_row,
)

logger = logging.getLogger(__name__)

CALLBACK_TOKEN_SALT = "videos.callback"  # noqa: S105 (an HMAC salt, not a secret)

# A finished task never changes again, so its answer is kept per process (the seed's
# "cache queries of finished tasks"): a consumer polling it costs no query.
_finished_answers: BoundedCache[dict[str, Any]] = BoundedCache(20_000)


# --- submit ------------------------------------------------------------------------


def submit_task(*, api_key: ApiKey, action: str, body: Any) -> HttpResponse:
    """Validate, price, reserve, send to Kling (failing over between channels), answer."""
    submit = validate_submit_body(action, body)
    if submit.callback_url:
        check_callback_url(submit.callback_url)
    if submit.external_task_id:
        _check_external_id_is_new(api_key, submit.external_task_id)
    parent = _parent_task(api_key, submit) if submit.parent_video_id else None
    if parent is not None and action == "video-extend":
        # An extension is one more step of the parent's video: priced by its model and mode.
        submit = replace(submit, model_name=parent.model_name, mode=parent.mode or "std")
    amount = price_for(
        action=action,
        model_name=submit.model_name,
        mode=submit.mode,
        duration=submit.duration,
        sound=submit.sound,
    )
    channels = _channels_for(submit, parent)

    with transaction.atomic():
        reserve_quota(account_id=api_key.account_id, amount=amount)
        task = VideoTask.objects.create(
            owner_id=api_key.account_id,
            api_key=api_key,
            action=action,
            model_name=submit.model_name,
            mode=submit.mode,
            duration=submit.duration,
            request_body=body,
            consumer_external_task_id=submit.external_task_id,
            consumer_callback_url=submit.callback_url,
            reserved_quota=amount,
            channels_tried=[channels[0].pk],
            # If this process dies before Kling's answer is stored, the reconciler
            # adopts or fails the task after this grace period.
            next_check_at=timezone.now() + timedelta(seconds=settings.RECONCILE_PENDING_AFTER),
        )

    upstream_body = dict(body)
    upstream_body["external_task_id"] = str(task.pk)
    upstream_body.pop("callback_url", None)
    if settings.SERVER_ADDRESS:
        upstream_body["callback_url"] = callback_url_for(task.pk)

    last_transient: UpstreamResponse | None = None
    failures: list[str] = []
    for attempt, channel in enumerate(channels[: settings.KLING_MAX_ATTEMPTS]):
        if attempt:  # the first channel was recorded with the task
            _note_channel_tried(task, channel)
        try:
            upstream = send_to_kling(
                channel, "POST", f"/v1/videos/{action}", json_body=upstream_body
            )
        except UpstreamUnavailable as error:
            _count_channel_use(channel, failed=True)
            failures.append(f"channel {channel.pk}: {error}")
            continue
        fault = classify_upstream_answer(upstream)
        if fault is not None:
            _count_channel_use(channel, failed=True)
            failures.append(f"channel {channel.pk}: {fault.reason}")
            if fault.disable_channel:
                logger.warning("channel %s disabled automatically: %s", channel.pk, fault.reason)
                channel.disable_automatically(fault.reason)
            else:
                last_transient = upstream
            continue
        _count_channel_use(channel, failed=False)
        if upstream.ok:
            task, _ = apply_upstream_state(
                task.pk, upstream.data, source="submit", channel_id=channel.pk
            )
            note_task(task.task_id)
        else:  # Kling refused the consumer's request: their error, passed through as is
            task, _ = fail_task(
                task.pk,
                f"Kling refused the request: HTTP {upstream.status} code {upstream.code} "
                f"{upstream.message}",
                source="submit",
            )
        return passthrough(upstream, task)

    reason = "No channel accepted the task: " + "; ".join(failures)
    task, _ = fail_task(task.pk, reason, source="submit")
    logger.warning("task %s failed at submit: %s", task.pk, reason)
    if last_transient is not None and last_transient.payload is not None:
        return passthrough(last_transient, task)  # e.g. Kling's own 429 / 5xx, as Kling sent it
    raise ServiceUnavailable("No upstream channel is available right now; please retry later")


def _check_external_id_is_new(api_key: ApiKey, external_task_id: str) -> None:
    """Kling requires external_task_id to be unique per account; so does the relay, per
    consumer. A task Kling never accepted does not use the id up."""
    if (
        VideoTask.objects.filter(
            owner_id=api_key.account_id, consumer_external_task_id=external_task_id
        )
        .exclude(status=TaskStatus.FAILED, task_id=None)
        .exists()
    ):
        raise InvalidParameter(
            f"external_task_id: '{external_task_id}' is already used by another task"
        )


def _parent_task(api_key: ApiKey, submit: SubmitRequest) -> VideoTask:
    # By video id alone (its own index): with owner and status in the query SQLite's
    # planner prefers the status index and scans every finished task.
    parent = next(
        (
            task
            for task in VideoTask.objects.filter(video_id=submit.parent_video_id)
            .select_related("channel")
            .order_by()[:20]
            if task.owner_id == api_key.account_id and task.status == TaskStatus.SUCCEED
        ),
        None,
    )
    if parent is None:
        field = "video_id" if submit.action == "video-extend" else "input.video_id"
        raise InvalidParameter(
            f"{field}: no succeeded video with id '{submit.parent_video_id}' "
            "belongs to this account"
        )
    return parent


def _channels_for(submit: SubmitRequest, parent: VideoTask | None) -> list[Channel]:
    if parent is not None:
        # Kling knows a video only in the account that made it.
        if parent.channel is None or not parent.channel.is_enabled:
            raise ServiceUnavailable(
                f"The channel that made video {submit.parent_video_id} is not available"
            )
        return [parent.channel]
    channels = candidate_channels(submit.model_name)
    if not channels:
        raise RelayError(
            f"model_name '{submit.model_name}' is not served by any enabled channel",
            http_status=403,
            code=1103,
        )
    return channels


def _note_channel_tried(task: VideoTask, channel: Channel) -> None:
    task.channels_tried = [*task.channels_tried, channel.pk]
    VideoTask.objects.filter(pk=task.pk).update(channels_tried=task.channels_tried)


def _count_channel_use(channel: Channel, *, failed: bool) -> None:
    Channel.objects.filter(pk=channel.pk).update(
        request_count=F("request_count") + 1,
        failure_count=F("failure_count") + (1 if failed else 0),
        last_used_at=timezone.now(),
    )


# --- callback URL and token --------------------------------------------------------


def callback_token(task_pk: int) -> str:
    return salted_hmac(CALLBACK_TOKEN_SALT, str(task_pk)).hexdigest()[:32]


def callback_url_for(task_pk: int) -> str:
    path = reverse("kling-callback")
    return f"{settings.SERVER_ADDRESS}{path}?token={callback_token(task_pk)}"


def callback_token_is_valid(task_pk: int, token: str) -> bool:
    return bool(token) and constant_time_compare(token, callback_token(task_pk))


# --- query -------------------------------------------------------------------------


def query_task(
    request: HttpRequest, *, api_key: ApiKey, task_id: str, action: str | None = None
) -> HttpResponse:
    """A consumer's task, by Kling's task id or their own external_task_id: from the
    database once finished, otherwise Kling's fresh answer."""
    cache_key = (api_key.account_id, action, task_id)
    finished = _finished_answers.get(cache_key)
    if finished is not None:
        return task_envelope(request, finished)
    task = _find_consumer_task(api_key, task_id, action)
    if task.is_finished:
        finished = consumer_task_object(task, task_object_from_row(task))
        _finished_answers.put(cache_key, finished)
        return task_envelope(request, finished)
    upstream = fetch_upstream_state(task)
    if upstream is None:
        return task_answer_from_row(request, task)  # the last known state beats an error
    if not (upstream.ok and isinstance(upstream.data, dict)):
        return passthrough(upstream, task)  # Kling's own answer, e.g. not found
    task = apply_fetched_state(task, upstream)
    if task.status != upstream.data.get("task_status"):
        # A callback got there first with newer news: answer what the relay knows.
        return task_answer_from_row(request, task)
    return passthrough(upstream, task)


def _find_consumer_task(api_key: ApiKey, task_id: str, action: str | None) -> VideoTask:
    tasks = VideoTask.objects.filter(owner_id=api_key.account_id).select_related("channel")
    if action:
        tasks = tasks.filter(action=action)
    task = tasks.filter(task_id=task_id).first()
    if task is None:  # Kling also accepts the consumer's own external_task_id here
        task = tasks.filter(consumer_external_task_id=task_id).exclude(task_id=None).first()
    if task is None:
        raise ResourceNotFound(f"Task {task_id} does not exist")
    note_task(task.task_id)
    return task


def fetch_upstream_state(task: VideoTask) -> UpstreamResponse | None:
    """Kling's current answer about an unfinished task; None when Kling could not say.

    Network only: safe to call from worker threads.
    """
    if task.channel is None or not task.task_id:
        return None
    try:
        upstream = send_to_kling(task.channel, "GET", f"/v1/videos/{task.action}/{task.task_id}")
    except UpstreamUnavailable:
        return None
    if classify_upstream_answer(upstream) is not None:
        return None
    return upstream


def apply_fetched_state(task: VideoTask, upstream: UpstreamResponse) -> VideoTask:
    """Apply Kling's answer to a query; an answer that says nothing new writes nothing."""
    if not (upstream.ok and isinstance(upstream.data, dict)):
        return task
    if upstream.data == task.upstream_payload and upstream.data.get("task_status") == task.status:
        return task  # a steady poll: no lock, no write, and the task keeps its "last news"
    task, _ = apply_upstream_state(task.pk, upstream.data, source="query")
    return task


def batch_query(request: HttpRequest, *, api_key: ApiKey, body: Any) -> HttpResponse:
    """The relay's extension: up to BATCH_QUERY_MAX tasks in one call, in request order.

    Finished tasks come from the database; unfinished ones are asked of Kling, at most
    BATCH_QUERY_CONCURRENCY at a time.
    """
    task_ids = body.get("task_ids") if isinstance(body, dict) else None
    if not isinstance(task_ids, list) or not task_ids:
        raise InvalidParameter("task_ids: a non-empty list of task ids is required")
    if len(task_ids) > settings.BATCH_QUERY_MAX:
        raise InvalidParameter(f"task_ids: at most {settings.BATCH_QUERY_MAX} ids per call")
    if not all(isinstance(task_id, str) and task_id for task_id in task_ids):
        raise InvalidParameter("task_ids: every id must be a non-empty string")

    found = {
        task.task_id: task
        for task in VideoTask.objects.filter(
            owner_id=api_key.account_id, task_id__in=set(task_ids)
        ).select_related("channel")
    }
    unfinished = [task for task in found.values() if not task.is_finished]
    with ThreadPoolExecutor(max_workers=settings.BATCH_QUERY_CONCURRENCY) as pool:
        answers = list(pool.map(fetch_upstream_state, unfinished))
    for task, upstream in zip(unfinished, answers, strict=True):
        if upstream is not None:
            found[task.task_id] = apply_fetched_state(task, upstream)

    requested = list(dict.fromkeys(task_ids))  # request order, each id once
    tasks = [
        consumer_task_object(found[task_id], task_object_from_row(found[task_id]))
        for task_id in requested
        if task_id in found
    ]
    missing = [task_id for task_id in requested if task_id not in found]
    return task_envelope(request, {"tasks": tasks, "not_found": missing})


# --- callback ----------------------------------------------------------------------

_STORED_HEADERS = ("Content-Type", "User-Agent", "X-Forwarded-For", "X-Request-Id")


def receive_callback(
    *, raw_body: bytes, headers: dict[str, str], remote_addr: str | None, token: str
) -> CallbackEvent:
    """Store the callback first, then act on it if it is genuine. Returns the event.

    If the database fails after the event is stored, the caller answers non-2xx (Kling
    retries) and the reconciler processes the stored event anyway: nothing is lost.
    """
    event = CallbackEvent.objects.create(
        body=raw_body.decode("utf-8", errors="replace"),
        headers={name: headers[name] for name in _STORED_HEADERS if name in headers},
        remote_addr=remote_addr or None,
        token=token[:64],
    )
    return process_callback_event(event)


def process_callback_event(event: CallbackEvent) -> CallbackEvent:
    try:
        payload = parse_json(event.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or "task_status" not in payload:
        return _close_event(event, CallbackEvent.Outcome.INVALID, "not a Kling task object")

    task = _match_callback_task(payload)
    if task is None:
        return _close_event(event, CallbackEvent.Outcome.UNMATCHED, "no task matches")
    if not callback_token_is_valid(task.pk, event.token):
        logger.warning("callback %s for task %s has a bad token: ignored", event.pk, task.pk)
        return _close_event(
            event, CallbackEvent.Outcome.BAD_TOKEN, "token missing or wrong", task=task
        )
    task, changed = apply_upstream_state(task.pk, payload, source="callback")
    outcome = CallbackEvent.Outcome.APPLIED if changed else CallbackEvent.Outcome.STALE
    return _close_event(event, outcome, f"task is {task.status}", task=task)


def _match_callback_task(payload: dict[str, Any]) -> VideoTask | None:
    """Our id (sent as external_task_id) first, Kling's task_id second."""
    task_info = payload.get("task_info") if isinstance(payload.get("task_info"), dict) else {}
    external_id = str(task_info.get("external_task_id") or payload.get("external_task_id") or "")
    upstream_task_id = str(payload.get("task_id") or "")
    if external_id.isdigit():
        task = VideoTask.objects.filter(pk=int(external_id)).first()
        # Another system sharing the Kling account may reuse our ids: a task that already
        # has a different Kling id is not the one this callback is about.
        if task is not None and (
            not task.task_id or task.task_id == upstream_task_id or not upstream_task_id
        ):
            return task
    if upstream_task_id:
        return VideoTask.objects.filter(task_id=upstream_task_id).first()
    return None


def _close_event(
    event: CallbackEvent, outcome: str, detail: str, task: VideoTask | None = None
) -> CallbackEvent:
    event.outcome = outcome
    event.detail = detail[:255]
    event.task = task
    event.save(update_fields=["outcome", "detail", "task"])
    count_callback(outcome)
    if task is not None:
        note_task(task.task_id)
    return event
