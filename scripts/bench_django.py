"""The benchmark's in-process half: runs with the bench DATABASE_URL, prints JSON.

    bench_django.py task-ids --out FILE --limit N
    bench_django.py seed-callbacks --count N --out FILE
    bench_django.py verify-callbacks --marker M
    bench_django.py inprocess --iterations N --profile-iterations M --unfinished-ids FILE

It is a separate process because each database needs its own Django settings, and so the
orchestrator's own threads never share a GIL with what is being measured.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "klingrelay.settings")

import django  # noqa: E402 (settings must be chosen first)

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Count, F, Sum  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from billing.models import Account, ApiKey, LedgerEntry  # noqa: E402
from channels_app.models import Channel  # noqa: E402
from videos.models import CallbackEvent, TaskStatus, VideoTask  # noqa: E402
from videos.reconcile import UNFINISHED  # noqa: E402
from videos.services import callback_token  # noqa: E402

BENCH_USER = os.environ.get("BENCH_USER", "bench")
CHANNEL_NAME = os.environ.get("BENCH_CHANNEL", "simulator")
PRICE = 5  # set_price kling-v1 std 5 s → 5


def _api_key() -> ApiKey:
    return ApiKey.objects.select_related("account").filter(account__user__username=BENCH_USER)[0]


# --- ids for the query runs ---------------------------------------------------------


def task_ids(out: Path, limit: int, finished: bool) -> dict[str, Any]:
    """Kling task ids of the bench consumer's unfinished tasks (made by the submit runs),
    or of its succeeded ones (called back)."""
    statuses = [TaskStatus.SUCCEED] if finished else UNFINISHED
    ids = list(
        VideoTask.objects.filter(owner__user__username=BENCH_USER, status__in=statuses)
        .exclude(task_id=None)
        .values_list("task_id", flat=True)[:limit]
    )
    out.write_text("".join(f"{task_id}\n" for task_id in ids))
    return {"count": len(ids)}


# --- callbacks ----------------------------------------------------------------------


def seed_callbacks(count: int, out: Path) -> dict[str, Any]:
    """`count` submitted tasks with their reservation, as if Kling had accepted them.

    Writes "pk token task_id" per line; the token is the relay's own callback_token().
    """
    api_key = _api_key()
    channel = Channel.objects.get(name=CHANNEL_NAME)
    marker = "cb" + uuid.uuid4().hex[:8]
    now = timezone.now()
    tasks = [
        VideoTask(
            owner_id=api_key.account_id,
            api_key=api_key,
            channel=channel,
            action="text2video",
            model_name="kling-v1",
            mode="std",
            duration="5",
            status=TaskStatus.SUBMITTED,
            request_body={"model_name": "kling-v1", "prompt": "bench"},
            task_id=f"{marker}{number:08d}",
            reserved_quota=PRICE,
            submitted_at=now,
        )
        for number in range(count)
    ]
    with transaction.atomic():
        created = VideoTask.objects.bulk_create(tasks, batch_size=2000)
        Account.objects.filter(pk=api_key.account_id).update(reserved=F("reserved") + PRICE * count)
    out.write_text("".join(f"{t.pk} {callback_token(t.pk)} {t.task_id}\n" for t in created))
    return {"count": len(created), "marker": marker}


def verify_callbacks(marker: str) -> dict[str, Any]:
    """Did every succeeded task get exactly one charge row, and nothing else?"""
    pool = VideoTask.objects.filter(task_id__startswith=marker)
    pool_ids = pool.values("pk")
    charges = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE, charged_task_id__in=pool_ids)
    charged_ids = charges.values("charged_task_id")
    succeeded = pool.filter(status=TaskStatus.SUCCEED)
    events = Counter(
        CallbackEvent.objects.filter(task__in=pool_ids).values_list("outcome", flat=True)
    )
    result = {
        "tasks": pool.count(),
        "succeeded": succeeded.count(),
        "still_unfinished": pool.filter(status__in=UNFINISHED).count(),
        "charge_rows": charges.count(),
        "tasks_charged_twice": charges.values("charged_task_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count(),
        "succeeded_without_charge": succeeded.exclude(pk__in=charged_ids).count(),
        "charged_without_success": charges.exclude(
            charged_task_id__in=succeeded.values("pk")
        ).count(),
        "wrong_charged_quota": succeeded.exclude(charged_quota=PRICE).count(),
        "events": dict(events),
    }
    result["account_consistent"] = _account_consistent()
    result["exactly_once"] = (
        result["charge_rows"] == result["succeeded"]
        and result["tasks_charged_twice"] == 0
        and result["succeeded_without_charge"] == 0
        and result["charged_without_success"] == 0
        and result["wrong_charged_quota"] == 0
        and result["account_consistent"]
    )
    return result


def _account_consistent() -> bool:
    """quota = sum of the ledger, reserved = holds of the unfinished tasks."""
    account = Account.objects.get(user__username=BENCH_USER)
    ledger = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"] or 0
    held = (
        VideoTask.objects.filter(owner=account, status__in=UNFINISHED).aggregate(
            s=Sum("reserved_quota")
        )["s"]
        or 0
    )
    return account.quota == ledger and account.reserved == held


# --- in-process timing and profiles -------------------------------------------------


class WsgiCaller:
    """Calls the relay's WSGI application the way gunicorn does, without any socket."""

    def __init__(self, raw_key: str) -> None:
        self.app = get_wsgi_application()
        self.raw_key = raw_key

    def __call__(self, method: str, path: str, body: bytes = b"", query: str = "") -> int:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:8000",
            **({"HTTP_AUTHORIZATION": f"Bearer {self.raw_key}"} if self.raw_key else {}),
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        status: list[str] = []
        response = self.app(environ, lambda s, headers, exc_info=None: status.append(s))
        try:
            b"".join(response)
        finally:
            response.close()  # request_finished: closes or keeps the DB connection
        return int(status[0].split()[0])


def _timed(call: Callable[[], int], iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        status = call()
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"in-process call answered {status}")
    return sorted(times)


def _pct(values: list[float], pct: float) -> float:
    return values[min(len(values) - 1, max(0, int(len(values) * pct / 100 + 0.999999) - 1))]


def _statements(call: Callable[[], int]) -> int:
    with CaptureQueriesContext(connection) as queries:
        call()
    return len(queries.captured_queries)


_OUR_PACKAGES = ("videos/", "billing/", "channels_app/", "klingrelay/")
# Wrappers every request passes through: listing them says nothing about where time goes.
_PASS_THROUGH = ("klingrelay/middleware.py", "videos/views.py")


def _bucket(filename: str, function: str) -> str:
    """Which layer a profiled function belongs to (by file; C functions by name)."""
    if filename == "~":
        if "_socket" in function or "select" in function or "poll" in function:
            return "socket I/O (waiting on Kling / the DB server)"
        database_calls = ("sqlite3", "_mysql", "Cursor", "Connection.", "execute", "commit", "ping")
        if any(mark in function for mark in database_calls):
            return "database driver and engine (C)"
        return "Python built-ins (C)"
    relative = filename.removeprefix(str(ROOT) + "/")
    if relative.startswith(_OUR_PACKAGES):
        return "our code (videos, billing, channels_app, klingrelay)"
    if "/django/db/" in filename:
        return "Django ORM (query building, model instances)"
    if "/django/" in filename:
        return "Django request handling, middleware, utils"
    if "/rest_framework/" in filename:
        return "Django REST framework"
    if any(m in filename for m in ("/requests/", "/urllib3/", "http/client.py", "/socket.py")):
        return "HTTP client (requests, urllib3, http.client)"
    if "/MySQLdb/" in filename or "/sqlite3/" in filename:
        return "database driver and engine (C)"
    if "/jwt/" in filename:
        return "PyJWT"
    return "Python standard library (json, copy, email parsing, …)"


def _profile(call: Callable[[], int], iterations: int) -> dict[str, Any]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    buckets: Counter[str] = Counter()
    ours: list[tuple[float, str]] = []
    for (filename, line, function), (_, _, own, cumulative, _) in stats.items():
        buckets[_bucket(filename, function)] += own
        relative = filename.removeprefix(str(ROOT) + "/")
        if relative.startswith(_OUR_PACKAGES) and not relative.startswith(_PASS_THROUGH):
            ours.append((cumulative, f"{relative}:{line} {function}"))
    total = sum(buckets.values()) or 1.0
    top_ours = sorted(ours, reverse=True)[:10]
    return {
        "buckets": [[name, 100 * seconds / total] for name, seconds in buckets.most_common()],
        "ours_cumulative": [[name, 100 * seconds / total] for seconds, name in top_ours],
    }


def _measure(call: Callable[[], int], iterations: int, profile_iterations: int) -> dict:
    for _ in range(5):  # warm caches: URL resolver, JWT token, prepared statements
        call()
    times = _timed(call, iterations)
    return {
        "iterations": iterations,
        "p50_ms": _pct(times, 50),
        "p99_ms": _pct(times, 99),
        "mean_ms": sum(times) / len(times),
        "statements": _statements(call),
        "profile": _profile(call, profile_iterations),
    }


def inprocess(iterations: int, profile_iterations: int, unfinished_ids: Path) -> dict[str, Any]:
    """Server time of each relay path without sockets or gunicorn, plus a profile."""
    caller = WsgiCaller(os.environ["BENCH_KEY"])
    results: dict[str, Any] = {}

    finished = (
        VideoTask.objects.filter(owner__user__username=BENCH_USER, status=TaskStatus.SUCCEED)
        .exclude(task_id=None)
        .values_list("task_id", flat=True)[:200]
    )
    finished_ids = list(finished) or ["none"]
    rotation = iter(range(10**9))

    def finished_query() -> int:
        task_id = finished_ids[next(rotation) % len(finished_ids)]
        return caller("GET", f"/kling/v1/videos/{task_id}")

    results["finished_query"] = _measure(finished_query, iterations, profile_iterations)

    ids = unfinished_ids.read_text().split() or ["none"]

    def unfinished_query() -> int:
        task_id = ids[next(rotation) % len(ids)]
        return caller("GET", f"/kling/v1/videos/text2video/{task_id}")

    few = max(min(iterations // 4, 100), 20)
    results["query"] = _measure(unfinished_query, few, profile_iterations)

    body = json.dumps({"model_name": "kling-v1", "mode": "std", "duration": "5", "prompt": "a cat"})

    def submit() -> int:
        return caller("POST", "/kling/v1/videos/text2video", body.encode())

    results["submit"] = _measure(submit, few, profile_iterations)

    pool_file = unfinished_ids.with_suffix(".inprocess-callbacks")
    seed_callbacks(few + profile_iterations + 10, pool_file)
    pool = iter(pool_file.read_text().splitlines())

    def callback() -> int:
        pk, token, task_id = next(pool).split()
        payload = {
            "task_id": task_id,
            "task_status": "succeed",
            "task_info": {"external_task_id": pk},
            "task_result": {"videos": [{"id": f"v{pk}", "url": "https://v.invalid/x.mp4"}]},
        }
        return caller(
            "POST", "/kling/internal/callback", json.dumps(payload).encode(), f"token={token}"
        )

    results["callback"] = _measure(callback, few, profile_iterations)
    results["floor"] = _framework_floor(caller, iterations)
    results["conn_max_age"] = connection.settings_dict["CONN_MAX_AGE"]
    return results


def _framework_floor(caller: WsgiCaller, iterations: int) -> dict[str, Any]:
    """Django + DRF with no database work: a query without credentials (DRF's 401)."""
    anonymous = WsgiCaller("")
    anonymous.app = caller.app
    quiet = logging.getLogger("django.request")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # every 401 would log a warning line
    try:
        times = _timed(
            lambda: 200 if anonymous("GET", "/kling/v1/videos/x") == 401 else 0, iterations
        )
    finally:
        quiet.setLevel(level)
    return {"iterations": iterations, "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ids = commands.add_parser("task-ids")
    ids.add_argument("--out", type=Path, required=True)
    ids.add_argument("--limit", type=int, default=5000)
    ids.add_argument("--finished", action="store_true")
    seed = commands.add_parser("seed-callbacks")
    seed.add_argument("--count", type=int, required=True)
    seed.add_argument("--out", type=Path, required=True)
    verify = commands.add_parser("verify-callbacks")
    verify.add_argument("--marker", required=True)
    inproc = commands.add_parser("inprocess")
    inproc.add_argument("--iterations", type=int, default=2000)
    inproc.add_argument("--profile-iterations", type=int, default=100)
    inproc.add_argument("--unfinished-ids", type=Path, required=True)
    args = parser.parse_args()

    if args.command == "task-ids":
        result = task_ids(args.out, args.limit, args.finished)
    elif args.command == "seed-callbacks":
        result = seed_callbacks(args.count, args.out)
    elif args.command == "verify-callbacks":
        result = verify_callbacks(args.marker)
    else:
        result = inprocess(args.iterations, args.profile_iterations, args.unfinished_ids)
    print("BENCH_JSON " + json.dumps(result))


if __name__ == "__main__":
    main()
