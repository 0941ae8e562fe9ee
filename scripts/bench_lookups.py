"""Grow videos_videotask to N rows with bulk SQL, then time the relay's own lookups.

    bench_lookups.py stage --rows N --t0 EPOCH [--deadline EPOCH] [--explain]

Runs with the bench DATABASE_URL and prints one JSON line (BENCH_JSON …); progress goes
to stderr. Each lookup is the relay's own ORM query (same filters, ordering, slicing),
so the SQL and plans are exactly what production would run.

The row model: 10,000 tasks a day (one every 8.64 s) spread over 1,000 consumers, so a
larger table means a longer history, not a busier day; 1 in 20 finished tasks failed;
only the newest 2,000 tasks are unfinished (what is in flight does not grow with
history). Keys looked up are drawn from the newest 100,000 tasks (ten days), because
consumers query, extend and receive callbacks for recent work. Rows are narrow (tiny
request bodies, no stored Kling payload): index lookups do not care, full scans would
be slower still on production-width rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "klingrelay.settings")

import django  # noqa: E402 (settings must be chosen first)

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from billing.models import Account  # noqa: E402
from channels_app.models import Channel  # noqa: E402
from videos.models import TaskStatus, VideoTask  # noqa: E402
from videos.paginators import EstimatedCountPaginator  # noqa: E402
from videos.reconcile import UNFINISHED  # noqa: E402

ID_BASE = 2_000_000_000  # synthetic row n has id ID_BASE + n, after any real task
TASK_ID_BASE = 10**18  # 19 digits: never one of the simulator's 18-digit ids
SECONDS_PER_TASK_X100 = 864  # 10,000 tasks a day
OWNERS = 1000
UNFINISHED_TAIL = 2000
RECENT = 100_000
CHUNK = 250_000
OWNER_PREFIX = "bench-owner-"
SQLITE = connection.vendor == "sqlite"


def progress(message: str) -> None:
    print(f"[lookups] {message}", file=sys.stderr, flush=True)


# --- the row model, in SQL for each database ------------------------------------------


def _concat(*parts: str) -> str:
    return " || ".join(parts) if SQLITE else f"CONCAT({', '.join(parts)})"


def _padded(number: str) -> str:
    return f"printf('%010d', {number})" if SQLITE else f"LPAD({number}, 10, '0')"


def _text(number: str) -> str:
    return f"CAST({number} AS TEXT)" if SQLITE else f"CAST({number} AS CHAR)"


def _moment(t0: int, offset: int) -> str:
    """created_at of row n (+ offset seconds), UTC, as Django stores it."""
    if SQLITE:
        return f"datetime({t0} + n * {SECONDS_PER_TASK_X100} / 100 + {offset}, 'unixepoch')"
    return (
        f"TIMESTAMPADD(SECOND, {t0} + n * {SECONDS_PER_TASK_X100} DIV 100 + {offset}, "
        "'1970-01-01 00:00:00')"
    )


def _numbers(first: int, last: int) -> str:
    """A row source of n = first..last (a recursive CTE; MariaDB's Sequence engine)."""
    if SQLITE:
        return (
            f"(WITH RECURSIVE seq(n) AS (SELECT {first} UNION ALL "  # noqa: S608 (integers)
            f"SELECT n + 1 FROM seq WHERE n < {last}) SELECT n FROM seq) AS numbers"
        )
    return f"(SELECT seq AS n FROM seq_{first}_to_{last}) AS numbers"  # noqa: S608 (integers)


COLUMNS = (
    "id, task_id, owner_id, api_key_id, channel_id, action, model_name, mode, duration, "
    "status, failure_reason, request_body, consumer_external_task_id, consumer_callback_url, "
    "upstream_payload, video_id, video_url, reserved_quota, charged_quota, channels_tried, "
    "created_at, updated_at, submitted_at, finished_at, next_check_at, check_count"
)


def _insert_sql(first: int, last: int, *, unfinished: bool, owner0: int, channel: int, t0: int):
    """INSERT … SELECT of rows first..last: finished history, or the in-flight tail."""
    if unfinished:
        status = "CASE WHEN n % 20 = 0 THEN 'pending' WHEN n % 2 = 0 THEN 'processing' ELSE 'submitted' END"  # noqa: E501
        task_id = f"CASE WHEN n % 20 = 0 THEN NULL ELSE {_text(f'{TASK_ID_BASE} + n')} END"
        video_id, charged, finished_at = "''", "0", "NULL"
        next_check = _moment(t0, 120)
    else:
        status = "CASE WHEN n % 20 = 0 THEN 'failed' ELSE 'succeed' END"
        task_id = _text(f"{TASK_ID_BASE} + n")
        padded_video_id = _concat("'v'", _padded("n"))
        video_id = f"CASE WHEN n % 20 = 0 THEN '' ELSE {padded_video_id} END"
        charged = "CASE WHEN n % 20 = 0 THEN 0 ELSE 5 END"
        finished_at, next_check = _moment(t0, 300), "NULL"
    padded_external_id = _concat("'ext-'", _padded("n"))
    external = f"CASE WHEN n % 2 = 0 THEN {padded_external_id} ELSE '' END"
    values = [
        f"{ID_BASE} + n",
        task_id,
        f"{owner0} + n % {OWNERS}",
        "NULL",
        str(channel),
        "'text2video'",
        "'kling-v1'",
        "'std'",
        "'5'",
        status,
        "''",
        """'{"prompt": "bench"}'""",
        external,
        "''",
        "NULL",
        video_id,
        "''",
        "5",
        charged,
        "'[]'",
        _moment(t0, 0),
        _moment(t0, 300),
        _moment(t0, 0),
        finished_at,
        next_check,
        "0",
    ]
    return f"INSERT INTO videos_videotask ({COLUMNS}) SELECT {', '.join(values)} FROM {_numbers(first, last)}"  # noqa: E501, S608 (integers only)


# --- seeding -----------------------------------------------------------------------


def ensure_owners() -> int:
    """1,000 consumers with contiguous account ids; returns the first id."""
    existing = list(
        Account.objects.filter(user__username__startswith=OWNER_PREFIX)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if not existing:
        users = get_user_model().objects.bulk_create(
            [
                get_user_model()(username=f"{OWNER_PREFIX}{i:04d}", password=make_password(None))
                for i in range(OWNERS)
            ]
        )
        Account.objects.bulk_create([Account(user=user) for user in users])
        existing = list(
            Account.objects.filter(user__username__startswith=OWNER_PREFIX)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
    if len(existing) != OWNERS or existing[-1] - existing[0] != OWNERS - 1:
        raise SystemExit("bench owners must have contiguous account ids")
    return existing[0]


def synthetic_rows() -> int:
    last = VideoTask.objects.filter(pk__gt=ID_BASE).order_by("-pk").values_list("pk", flat=True)
    return (last[0] - ID_BASE) if last else 0


def _fast_bulk_session(cursor) -> None:
    """Seeding only: the rows are valid by construction and nothing here must survive a
    crash, so skip fsyncs and per-row checks the database would otherwise repeat."""
    if SQLITE:
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-524288")
    else:
        cursor.execute("SET unique_checks=0, foreign_key_checks=0, check_constraint_checks=0")


def grow(target: int, t0: int, deadline: float) -> dict[str, Any]:
    """Grow the synthetic history to `target` rows (or as far as the deadline allows)."""
    owner0 = ensure_owners()
    channel = Channel.objects.order_by("pk").values_list("pk", flat=True)[0]
    before = synthetic_rows()
    started = time.monotonic()
    with connection.cursor() as cursor:
        _fast_bulk_session(cursor)
        # The old in-flight tail has finished by now: replace it with finished rows.
        tail_start = max(before - UNFINISHED_TAIL, 0) + 1
        if before:
            _replace_rows(cursor, tail_start, before, False, owner0, channel, t0)
        current = before
        while current < target:
            chunk_end = min(current + CHUNK, target)
            elapsed = time.monotonic() - started
            rate = (current - before) / elapsed if current > before else None
            if rate and time.time() + (chunk_end - current) / rate > deadline:
                progress(f"stopping at {current:,} rows: the time budget is spent")
                break
            with transaction.atomic():
                cursor.execute(
                    _insert_sql(
                        current + 1,
                        chunk_end,
                        unfinished=False,
                        owner0=owner0,
                        channel=channel,
                        t0=t0,
                    )
                )
            current = chunk_end
            rate = (current - before) / (time.monotonic() - started)
            progress(f"{current:,} rows ({rate:,.0f} rows/s)")
        tail_start = max(current - UNFINISHED_TAIL, 0) + 1
        _replace_rows(cursor, tail_start, current, True, owner0, channel, t0)
    seconds = time.monotonic() - started
    return {
        "rows_before": before,
        "rows": current,
        "seed_seconds": seconds,
        "rows_per_second": (current - before) / seconds if current > before else None,
    }


def _replace_rows(cursor, first: int, last: int, unfinished: bool, owner0, channel, t0) -> None:
    with transaction.atomic():
        # Plain SQL: synthetic rows have no callbacks or deliveries to cascade to.
        cursor.execute(
            f"DELETE FROM videos_videotask WHERE id BETWEEN {ID_BASE + first} AND {ID_BASE + last}"  # noqa: S608
        )
        cursor.execute(
            _insert_sql(first, last, unfinished=unfinished, owner0=owner0, channel=channel, t0=t0)
        )


def table_size() -> dict[str, Any]:
    with connection.cursor() as cursor:
        if SQLITE:
            cursor.execute(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            )
            return {"database_bytes": cursor.fetchone()[0]}
        cursor.execute(
            "SELECT data_length, index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = 'videos_videotask'"
        )
        data, index = cursor.fetchone()
        return {"data_bytes": data, "index_bytes": index}


# --- the lookups ----------------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    name: str
    where: str  # the relay code that runs this query
    run: Callable[[], Any]


def lookups(rows: int, t0: int, owner0: int, rng: random.Random) -> list[Lookup]:
    now = datetime.fromtimestamp(t0 + rows * SECONDS_PER_TASK_X100 // 100 + 600, tz=UTC)
    finished_last = max(rows - UNFINISHED_TAIL, 1)

    def recent(even: bool = False, succeeded: bool = False) -> int:
        while True:
            n = rng.randint(max(1, finished_last - RECENT), finished_last)
            if (not even or n % 2 == 0) and (not succeeded or n % 20 != 0):
                return n

    def owner(n: int) -> int:
        return owner0 + n % OWNERS

    def consumer_tasks(n: int):
        return VideoTask.objects.filter(owner_id=owner(n)).select_related("channel")

    def by_task_id():
        n = recent()
        return consumer_tasks(n).filter(task_id=str(TASK_ID_BASE + n)).first()

    def by_external_id():
        n = recent(even=True)
        return (
            consumer_tasks(n)
            .filter(consumer_external_task_id=f"ext-{n:010d}")
            .exclude(task_id=None)
            .first()
        )

    def by_video_id():
        n = recent(succeeded=True)
        return [
            task
            for task in VideoTask.objects.filter(video_id=f"v{n:010d}")
            .select_related("channel")
            .order_by()[:20]
            if task.owner_id == owner(n) and task.status == TaskStatus.SUCCEED
        ][:1]

    def callback_by_pk():
        return VideoTask.objects.filter(pk=ID_BASE + recent()).first()

    def callback_by_task_id():
        return VideoTask.objects.filter(task_id=str(TASK_ID_BASE + recent())).first()

    def list_page():
        n = recent()
        return list(
            VideoTask.objects.filter(owner_id=owner(n), action="text2video")
            .exclude(task_id=None)
            .order_by("-id")[0:30]
        )

    def batch_query():
        n = recent()
        ids = {str(TASK_ID_BASE + n - OWNERS * k) for k in range(100)}
        return list(
            VideoTask.objects.filter(owner_id=owner(n), task_id__in=ids).select_related("channel")
        )

    def due_tasks():
        with transaction.atomic():
            found = list(
                VideoTask.objects.select_for_update(skip_locked=True)
                .filter(status__in=UNFINISHED, next_check_at__lte=now)
                .order_by("next_check_at")[: settings.RECONCILE_BATCH]
            )
            transaction.set_rollback(True)
        return found

    def expired_tasks():
        cutoff = now - timedelta(seconds=settings.TASK_MAX_AGE)
        return list(
            VideoTask.objects.filter(status__in=UNFINISHED, created_at__lt=cutoff)
            .order_by()
            .values_list("pk", flat=True)[:1000]
        )

    def stuck_count():
        cutoff = now - timedelta(seconds=settings.STUCK_AFTER)
        return VideoTask.objects.filter(status__in=UNFINISHED, updated_at__lt=cutoff).count()

    def todays_count():
        day = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        return VideoTask.objects.filter(
            created_at__gte=day, created_at__lt=day + timedelta(days=1)
        ).count()

    def changelist_count():
        return EstimatedCountPaginator(VideoTask.objects.order_by("-id"), 100).count

    return [
        Lookup("query by task_id (owner)", "services._find_consumer_task", by_task_id),
        Lookup("query by external_task_id", "services._find_consumer_task", by_external_id),
        Lookup("extend: parent by video_id", "services._parent_task", by_video_id),
        Lookup("callback: match by id", "services._match_callback_task", callback_by_pk),
        Lookup("callback: match by task_id", "services._match_callback_task", callback_by_task_id),
        Lookup("list page (owner+action, -id, 30)", "selectors.list_tasks", list_page),
        Lookup("batch query (100 ids)", "services.batch_query", batch_query),
        Lookup("reconciler: due tasks (200)", "reconcile.claim_due_tasks", due_tasks),
        Lookup("reconciler: expired tasks", "reconcile.expire_old_tasks", expired_tasks),
        Lookup("stuck tasks count", "reconcile.stuck_tasks().count()", stuck_count),
        Lookup("day's tasks count", "admin 'created_at: today' filter", todays_count),
        Lookup("all tasks count", "admin task list paginator", changelist_count),
    ]


def time_lookup(lookup: Lookup, iterations: int, max_seconds: float) -> dict[str, Any]:
    """Median and p90 over up to `iterations` calls within about `max_seconds`.

    The first call warms caches and records the SQL for EXPLAIN; a lookup that takes a
    third of the allowance or more (a full scan) is timed by that one call, so a slow
    plan costs the budget once, not five times.
    """
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        lookup.run()
        first = (time.perf_counter() - started) * 1000
    statements = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    times: list[float] = []
    if first < max_seconds * 1000 / 3:
        budget_end = time.monotonic() + max_seconds
        while len(times) < iterations and (len(times) < 3 or time.monotonic() < budget_end):
            started = time.perf_counter()
            lookup.run()
            times.append((time.perf_counter() - started) * 1000)
    times = sorted(times) or [first]
    return {
        "iterations": len(times),
        "p50_ms": times[len(times) // 2],
        "p90_ms": times[min(len(times) - 1, int(len(times) * 0.9))],
        "sql": statements[-1] if statements else "",
    }


def explain(sql: str) -> dict[str, Any]:
    """The database's plan for the SQL a lookup really ran."""
    with connection.cursor() as cursor:
        if SQLITE:
            cursor.execute("EXPLAIN QUERY PLAN " + sql)
            plan = [row[-1] for row in cursor.fetchall()]
        else:
            cursor.execute("EXPLAIN " + sql)
            names = [column[0] for column in cursor.description]
            plan = [" | ".join(names)] + [
                " | ".join("" if v is None else str(v) for v in row) for row in cursor.fetchall()
            ]
    return {"plan": plan, "scan": _is_scan(plan)}


def _is_scan(plan: list[str]) -> bool:
    """Does the plan read the whole task table (or a whole index of it)?"""
    if SQLITE:
        return any(
            (line.startswith("SCAN videos_videotask") and "USING INDEX" not in line)
            or line.startswith("SCAN videos_videotask USING COVERING INDEX")
            for line in plan
        )
    rows = [line.split(" | ") for line in plan[1:]]
    return any(len(cols) > 4 and cols[3] in ("ALL", "index") for cols in rows)


def stage(rows: int, t0: int, deadline: float, want_explain: bool, iterations: int) -> dict:
    grown = grow(rows, t0, deadline)
    rng = random.Random(rows)  # noqa: S311 (benchmark sampling, not security)
    results = []
    for lookup in lookups(grown["rows"], t0, ensure_owners(), rng):
        timing = time_lookup(lookup, iterations, max_seconds=1.5)
        entry = {"name": lookup.name, "where": lookup.where, **timing}
        if want_explain and entry["sql"]:
            entry.update(explain(entry["sql"]))
        results.append(entry)
        progress(f"{lookup.name}: p50 {timing['p50_ms']:.3f} ms")
    return {**grown, **table_size(), "lookups": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("stage")
    run.add_argument("--rows", type=int, required=True)
    run.add_argument("--t0", type=int, required=True, help="epoch of synthetic row 0")
    run.add_argument("--deadline", type=float, default=float("inf"), help="epoch to stop by")
    run.add_argument("--iterations", type=int, default=40)
    run.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    result = stage(args.rows, args.t0, args.deadline, args.explain, args.iterations)
    print("BENCH_JSON " + json.dumps(result))


if __name__ == "__main__":
    main()
