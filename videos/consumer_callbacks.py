"""Forwarding task updates to a consumer's own `callback_url`.

The relay calls the consumer back as Kling would: the task object (their own
`external_task_id` in it) on every status change after Kling accepted the task. Each
update is a CallbackDelivery row written in the same transaction as the change, delivered
by the task worker, signed with the consumer key's webhook secret, and retried with
exponential backoff until it is answered 2xx or too old.
"""

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_tasks import task as background_task

from klingrelay.errors import InvalidParameter
from klingrelay.jsonbody import dump_json
from klingrelay.metrics import count_delivery_attempt, count_delivery_finished

from .models import CallbackDelivery, TaskStatus, VideoTask
from .wire import consumer_task_object, task_object_from_row

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Relay-Signature"
FORWARDED_STATUSES = {TaskStatus.PROCESSING, TaskStatus.SUCCEED, TaskStatus.FAILED}
# A claimed delivery is not picked up by another worker for this long.
CLAIM_LEASE = timedelta(minutes=2)

_session = requests.Session()
_session.headers.update({"User-Agent": "kling-relay-callback/1.0"})


class UnsafeCallbackUrl(InvalidParameter):
    pass


# --- validation --------------------------------------------------------------------


def check_callback_url(url: str) -> None:
    """Refuse URLs the relay must not call: other schemes, and hosts that resolve to
    loopback, private, link-local (cloud metadata) or otherwise non-public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeCallbackUrl("callback_url: must be an http(s) URL with a host")
    try:
        # Django's URLValidator lets any 1-5 digit port through; urlsplit checks the range
        # only when asked, with a ValueError that would otherwise be a 500.
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise UnsafeCallbackUrl("callback_url: the port must be between 1 and 65535")
    host = parts.hostname
    if host in settings.CONSUMER_CALLBACK_ALLOWED_HOSTS:
        return
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError):
        raise UnsafeCallbackUrl(f"callback_url: host '{host}' cannot be resolved") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise UnsafeCallbackUrl(
                f"callback_url: host '{host}' resolves to a non-public address ({ip}); "
                "the relay only calls public hosts"
            )


# --- scheduling (inside the transition's transaction) --------------------------------


def schedule_delivery(task: VideoTask, task_object: dict | None) -> CallbackDelivery | None:
    """Record the update for the consumer; the worker is told once the change commits."""
    if not task.consumer_callback_url or not task.task_id:
        return None
    if task.status not in FORWARDED_STATUSES:
        return None
    shown = consumer_task_object(task, task_object or task_object_from_row(task))
    delivery = CallbackDelivery.objects.create(
        task=task,
        url=task.consumer_callback_url,
        body=dump_json(shown).decode(),
        task_status=task.status,
        next_attempt_at=timezone.now(),
    )
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def _enqueue(delivery_id: int, run_after=None) -> None:
    try:
        task = (
            deliver_callback_task.using(run_after=run_after) if run_after else deliver_callback_task
        )
        task.enqueue(delivery_id)
    except Exception:  # the sweep re-enqueues; a queue hiccup must not fail the caller
        logger.exception("could not enqueue callback delivery %s", delivery_id)


# --- delivery ------------------------------------------------------------------------


def signature_for(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 15 s, 30 s, 1 min … 1 h."""
    return min(
        settings.CONSUMER_CALLBACK_FIRST_RETRY * 2 ** max(attempts - 1, 0),
        settings.CONSUMER_CALLBACK_MAX_INTERVAL,
    )


def deliver(delivery_id: int) -> str:
    """One attempt at a delivery, if it is due and no one else holds it. Returns its state."""
    now = timezone.now()
    claimed = CallbackDelivery.objects.filter(
        pk=delivery_id, state=CallbackDelivery.State.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + CLAIM_LEASE)
    delivery = CallbackDelivery.objects.select_related("task__api_key").get(pk=delivery_id)
    if not claimed:
        return delivery.state

    body = delivery.body.encode()
    status_code, error = _post(delivery, body)
    attempts = delivery.attempts + 1
    fields = {
        "attempts": F("attempts") + 1,
        "last_attempt_at": timezone.now(),
        "last_status_code": status_code,
        "last_error": error[:500],
    }
    if status_code is not None and 200 <= status_code < 300:
        fields |= {"state": CallbackDelivery.State.DELIVERED, "delivered_at": timezone.now()}
        state = CallbackDelivery.State.DELIVERED
    elif (now - delivery.created_at).total_seconds() >= settings.CONSUMER_CALLBACK_GIVE_UP_AFTER:
        fields["state"] = CallbackDelivery.State.GAVE_UP
        state = CallbackDelivery.State.GAVE_UP
        logger.warning("gave up delivering callback %s after %s attempts", delivery_id, attempts)
    else:
        fields["next_attempt_at"] = timezone.now() + timedelta(seconds=retry_delay(attempts))
        state = CallbackDelivery.State.PENDING
    CallbackDelivery.objects.filter(pk=delivery_id).update(**fields)
    count_delivery_attempt(status_code)
    if state == CallbackDelivery.State.PENDING:
        _enqueue(delivery_id, run_after=fields["next_attempt_at"])
    else:
        count_delivery_finished(state)
    return state


def _post(delivery: CallbackDelivery, body: bytes) -> tuple[int | None, str]:
    try:
        check_callback_url(delivery.url)  # again: DNS may have changed since submit
    except UnsafeCallbackUrl as refused:
        return None, refused.message
    api_key = delivery.task.api_key
    headers = {"Content-Type": "application/json", "X-Relay-Delivery": str(delivery.pk)}
    if api_key is not None:
        headers[SIGNATURE_HEADER] = signature_for(api_key.webhook_secret, int(time.time()), body)
    try:
        response = _session.post(
            delivery.url,
            data=body,
            headers=headers,
            timeout=settings.CONSUMER_CALLBACK_TIMEOUT,
            allow_redirects=False,
        )
    except requests.RequestException as failure:
        return None, f"{type(failure).__name__}: {failure}"
    return response.status_code, "" if response.ok else response.text[:200]


@background_task()
def deliver_callback_task(delivery_id: int) -> str:
    return deliver(delivery_id)


def enqueue_due_deliveries(due_before=None, limit: int = 500) -> int:
    """Re-enqueue pending deliveries due before a time (default now): a lost enqueue or a
    worker that died mid-attempt. A delivery enqueued twice is still sent once."""
    due = CallbackDelivery.objects.filter(
        state=CallbackDelivery.State.PENDING,
        next_attempt_at__lte=due_before or timezone.now(),
    ).values_list("pk", flat=True)[:limit]
    count = 0
    for delivery_id in due:
        _enqueue(delivery_id)
        count += 1
    return count
