"""What the operators' dashboard shows: task outcomes, times and charges over a period.

Reads only. The task table grows by millions of rows and has no index on `created_at`,
so every task query is bounded by the primary key: ids follow creation, and the last id
created before the period (`first_id_after`) turns "created in the period" into a range
of the primary key, which both SQLite and InnoDB store the rows in. A query then reads
the period's rows and nothing older, whatever the table's size.

Times to finish are counted per whole second in SQL (`SecondsBetween`) and the
percentiles computed from those counts: exact to the second, the same on SQLite and
MariaDB, and what travels from the database is bounded by the number of distinct
durations (a few thousand at most), not by the number of tasks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from django.db import NotSupportedError
from django.db.models import (
    Case,
    Count,
    Expression,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    When,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from billing.models import Account, LedgerEntry
from channels_app.models import Channel

from .models import CallbackDelivery, CallbackEvent, TaskStatus, VideoTask
from .reconcile import stuck_tasks

# --- the period -------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    since: datetime
    until: datetime

    @cached_property
    def first_task_id(self) -> int:
        """Tasks with a greater id may be in the period; the ones below are older."""
        return first_id_after(self.since)

    @property
    def days(self) -> list[date]:
        """The local calendar days the period touches, oldest first."""
        first = timezone.localdate(self.since)
        last = timezone.localdate(self.until)
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]


PERIODS = {"24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
DEFAULT_PERIOD = "7d"


def get_period(key: str | None, now: datetime | None = None) -> Period:
    """One of PERIODS (the default for anything else).

    24 hours is a rolling window; 7 and 30 days are whole local days including today, so
    every day in the per-day tables and charts is complete except today's.
    """
    key = key if key in PERIODS else DEFAULT_PERIOD
    now = now or timezone.now()
    if key == "24h":
        since = now - timedelta(hours=24)
    else:
        days = int(key.removesuffix("d"))
        today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - timedelta(days=days - 1)
    return Period(key=key, label=PERIODS[key], since=since, until=now)


def first_id_after(since: datetime) -> int:
    """The id below which every task was created before `since` (0 if none was).

    Read backwards along the primary key from the newest task, so it costs the period's
    rows, not the table's. It relies on ids following `created_at` (auto_now_add, set as
    the row is inserted); clocks a few seconds apart on two servers move the edge of the
    period by as much, which a dashboard can live with.
    """
    older = (
        VideoTask.objects.filter(created_at__lt=since)
        .order_by("-id")
        .values_list("id", flat=True)
        .first()
    )
    return older or 0


def tasks_in_period(period: Period, owner_id: int | None = None) -> QuerySet[VideoTask]:
    """Tasks created in the period: a primary key range, then the exact time."""
    tasks = VideoTask.objects.filter(id__gt=period.first_task_id)
    tasks = tasks.filter(created_at__gte=period.since, created_at__lte=period.until)
    if owner_id is not None:
        tasks = tasks.filter(owner_id=owner_id)
    return tasks.order_by()  # no Meta.ordering in GROUP BY queries


# --- durations --------------------------------------------------------------------------


class SecondsBetween(Func):
    """Whole seconds from `start` to `end` (truncated), on SQLite and MariaDB/MySQL.

    Django's datetime subtraction gives a DurationField, which can be neither grouped by
    the second nor divided portably, hence one small function per database.
    """

    arity = 2
    output_field = IntegerField()

    def __init__(self, start: Any, end: Any) -> None:
        super().__init__(start, end)

    def _compile(self, compiler) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
        start, end = self.get_source_expressions()
        return compiler.compile(start), compiler.compile(end)

    def as_sqlite(self, compiler, connection, **extra_context) -> tuple[str, list[Any]]:
        (start, start_params), (end, end_params) = self._compile(compiler)
        # julianday() counts days in a double: round to milliseconds before truncating
        # to seconds, or an exact minute could come out as 59.99999 → 59 s.
        sql = f"(CAST(ROUND((julianday({end}) - julianday({start})) * 86400000) AS INTEGER) / 1000)"
        return sql, [*end_params, *start_params]

    def as_mysql(self, compiler, connection, **extra_context) -> tuple[str, list[Any]]:
        (start, start_params), (end, end_params) = self._compile(compiler)
        return f"TIMESTAMPDIFF(SECOND, {start}, {end})", [*start_params, *end_params]

    def as_sql(self, compiler, connection, **extra_context) -> tuple[str, list[Any]]:
        raise NotSupportedError(f"SecondsBetween is not written for {connection.vendor}")


def percentile(counts: Mapping[int, int], fraction: float) -> float | None:
    """The `fraction` percentile of values given as {value: how many times}.

    Linear interpolation between the two nearest ranks, as PERCENTILE_CONT and
    numpy's default do: the median of 60 and 120 is 90.
    """
    total = sum(counts.values())
    if total == 0:
        return None
    position = fraction * (total - 1)
    lower_rank = math.floor(position)
    ranked = sorted(counts.items())

    def value_at(rank: int) -> int:
        seen = 0
        for value, count in ranked:
            seen += count
            if seen > rank:
                return value
        return ranked[-1][0]

    lower, upper = value_at(lower_rank), value_at(min(lower_rank + 1, total - 1))
    return lower + (upper - lower) * (position - lower_rank)


def format_seconds(seconds: float | None) -> str:
    """45s, 2m 05s, 1h 02m; an en dash when there is nothing to measure."""
    if seconds is None:
        return "–"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


# --- outcomes ---------------------------------------------------------------------------


@dataclass
class Outcomes:
    """Tasks created in the period for one day, channel, model or consumer.

    `charged` is what the ledger's charge rows booked in the period, for the tasks of
    this group (a charge may be for a task created just before the period started).
    """

    key: Any
    label: str = ""
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    charged: int = 0
    charges: int = 0
    durations: Counter[int] = field(default_factory=Counter)  # seconds → succeeded tasks
    url: str = ""  # the page about this group, filled in by the view
    tasks_url: str = ""  # its tasks in the admin's task list

    @property
    def running(self) -> int:
        return self.submitted - self.succeeded - self.failed

    @property
    def success_rate(self) -> float | None:
        """Succeeded out of finished: a task still running is not yet a failure."""
        finished = self.succeeded + self.failed
        return self.succeeded / finished if finished else None

    @property
    def success_percent(self) -> str:
        rate = self.success_rate
        return "–" if rate is None else f"{rate:.1%}"

    @property
    def median_seconds(self) -> float | None:
        return percentile(self.durations, 0.5)

    @property
    def p95_seconds(self) -> float | None:
        return percentile(self.durations, 0.95)

    @property
    def median_display(self) -> str:
        return format_seconds(self.median_seconds)

    @property
    def p95_display(self) -> str:
        return format_seconds(self.p95_seconds)

    def add(self, other: Outcomes) -> None:
        self.submitted += other.submitted
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.charged += other.charged
        self.charges += other.charges
        self.durations.update(other.durations)


OUTCOME_COUNTS = {
    "submitted": Count("id"),
    "succeeded": Count("id", filter=Q(status=TaskStatus.SUCCEED)),
    "failed": Count("id", filter=Q(status=TaskStatus.FAILED)),
}


def count_outcomes(
    tasks: QuerySet[VideoTask], key: str | Expression, *, top: int | None = None
) -> dict[Any, Outcomes]:
    """Submitted/succeeded/failed per value of `key`, and how many succeeded tasks took
    each whole number of seconds, in one GROUP BY (key, seconds) over the period's rows.

    `top`: only the groups with the most tasks (`key` must then be a column name); they
    are chosen first by a plain GROUP BY key, so the per-second rows of the others are
    never read.
    """
    group = F(key) if isinstance(key, str) else key
    groups: dict[Any, Outcomes] = {}
    if top is not None:
        largest = (
            tasks.values(bucket=group)
            .annotate(submitted=Count("id"))
            .order_by("-submitted", "bucket")[:top]
        )
        groups = {row["bucket"]: Outcomes(key=row["bucket"]) for row in largest}
        tasks = tasks.filter(**{f"{key}__in": list(groups)})
    seconds = Case(
        When(
            status=TaskStatus.SUCCEED,
            finished_at__isnull=False,
            then=SecondsBetween("created_at", "finished_at"),
        ),
        default=None,  # one row per group for every task that did not succeed
        output_field=IntegerField(),
    )
    for row in tasks.values(bucket=group, seconds=seconds).annotate(**OUTCOME_COUNTS):
        outcomes = groups.setdefault(row["bucket"], Outcomes(key=row["bucket"]))
        outcomes.submitted += row["submitted"]
        outcomes.succeeded += row["succeeded"]
        outcomes.failed += row["failed"]
        if row["seconds"] is not None:
            # Two servers' clocks may disagree a little: nothing finishes before it starts.
            outcomes.durations[max(row["seconds"], 0)] += row["succeeded"]
    return groups


def charges_in_period(period: Period, owner_id: int | None = None) -> QuerySet[LedgerEntry]:
    """Charge rows booked in the period (the ledger's created_at is indexed)."""
    rows = LedgerEntry.objects.filter(
        kind=LedgerEntry.Kind.CHARGE, created_at__gte=period.since, created_at__lte=period.until
    )
    if owner_id is not None:
        rows = rows.filter(account_id=owner_id)
    return rows.order_by()


def charged_task(column: str) -> Subquery:
    """A column of the task a ledger row charged. The ledger names its task by id, not by
    a foreign key (billing does not know videos): one primary key lookup per row."""
    task = VideoTask.objects.filter(pk=OuterRef("charged_task_id")).order_by()
    return Subquery(task.values(column)[:1])


def add_charges(
    groups: dict[Any, Outcomes], charges: QuerySet[LedgerEntry], key: str | Expression
) -> None:
    """Adds the quota charged per value of `key`. Ledger amounts of charges are negative."""
    group = F(key) if isinstance(key, str) else key
    for row in charges.values(bucket=group).annotate(total=Sum("amount"), rows=Count("id")):
        outcomes = groups.setdefault(row["bucket"], Outcomes(key=row["bucket"]))
        outcomes.charged += -(row["total"] or 0)
        outcomes.charges += row["rows"]


# --- the dashboard ----------------------------------------------------------------------


@dataclass
class PeriodReport:
    period: Period
    total: Outcomes
    days: list[Outcomes]
    channels: list[Outcomes]
    models: list[Outcomes]
    consumers: list[Outcomes] = field(default_factory=list)


TOP_CONSUMERS = 50


def _by_size(groups: dict[Any, Outcomes]) -> list[Outcomes]:
    return sorted(groups.values(), key=lambda outcomes: (-outcomes.submitted, outcomes.label))


def period_report(period: Period, owner_id: int | None = None) -> PeriodReport:
    """Outcomes, times and charges of the period per day, channel and model, and per
    consumer (the TOP_CONSUMERS with the most tasks); with `owner_id`, of that consumer."""
    tasks = tasks_in_period(period, owner_id)
    charges = charges_in_period(period, owner_id)

    counted = count_outcomes(tasks, TruncDate("created_at"))
    add_charges(counted, charges, TruncDate("created_at"))
    days = [counted.get(day) or Outcomes(key=day) for day in period.days]
    total = Outcomes(key=None, label="All")
    for outcomes in days:
        outcomes.label = outcomes.key.isoformat()
        total.add(outcomes)

    channels = count_outcomes(tasks, "channel_id")
    add_charges(channels, charges, charged_task("channel_id"))
    names = dict(
        Channel.objects.filter(pk__in=[pk for pk in channels if pk]).values_list("id", "name")
    )
    for pk, outcomes in channels.items():
        outcomes.label = names.get(pk, f"#{pk}") if pk else "(no channel)"

    models = count_outcomes(tasks, "model_name")
    add_charges(models, charges, charged_task("model_name"))
    for name, outcomes in models.items():
        outcomes.label = name or "(unknown)"

    report = PeriodReport(
        period=period, total=total, days=days, channels=_by_size(channels), models=_by_size(models)
    )
    if owner_id is None:
        consumers = count_outcomes(tasks, "owner_id", top=TOP_CONSUMERS)
        add_charges(consumers, charges.filter(account_id__in=list(consumers)), "account_id")
        usernames = dict(
            Account.objects.filter(pk__in=list(consumers)).values_list("id", "user__username")
        )
        for pk, outcomes in consumers.items():
            outcomes.label = usernames.get(pk, f"#{pk}")
        report.consumers = _by_size(consumers)
    return report


# --- what needs attention now -----------------------------------------------------------

ATTENTION_ROWS = 20


# Fetched after the tasks, not joined: a join with the small account table makes MariaDB
# sort every failed task of the period instead of reading the newest 20 off the index.
TASK_NAMES = ("owner__user", "channel")


@dataclass
class Attention:
    stuck_count: int
    stuck: list[VideoTask]  # oldest news first
    failed: list[VideoTask]  # newest first, created in the period
    disabled_channels: list[Channel]  # disabled automatically
    callbacks_not_applied: dict[str, int]  # outcome → events received in the period
    callbacks: list[CallbackEvent]
    gave_up_count: int
    gave_up: list[CallbackDelivery]

    @property
    def callbacks_not_applied_count(self) -> int:
        return sum(self.callbacks_not_applied.values())


def needs_attention(period: Period) -> Attention:
    """What is stuck or failing, each list short and read through an index."""
    stuck = stuck_tasks()
    failed = tasks_in_period(period).filter(status=TaskStatus.FAILED)
    callbacks = CallbackEvent.objects.filter(
        outcome__in=CallbackEvent.FAILED_OUTCOMES, received_at__gte=period.since
    )
    gave_up = CallbackDelivery.objects.filter(
        state=CallbackDelivery.State.GAVE_UP, last_attempt_at__gte=period.since
    )
    per_outcome = callbacks.order_by().values("outcome").annotate(events=Count("id"))
    return Attention(
        stuck_count=stuck.count(),
        stuck=list(stuck.prefetch_related(*TASK_NAMES).order_by("updated_at")[:ATTENTION_ROWS]),
        failed=list(failed.prefetch_related(*TASK_NAMES).order_by("-id")[:ATTENTION_ROWS]),
        disabled_channels=list(
            Channel.objects.filter(status=Channel.Status.AUTO_DISABLED).order_by("-disabled_at")
        ),
        callbacks_not_applied={row["outcome"]: row["events"] for row in per_outcome},
        callbacks=list(callbacks.select_related("task").order_by("-received_at")[:ATTENTION_ROWS]),
        gave_up_count=gave_up.count(),
        gave_up=list(gave_up.order_by("-last_attempt_at")[:ATTENTION_ROWS]),
    )


# --- one consumer -------------------------------------------------------------------------

CSV_COLUMNS = (
    ("id", "id"),
    ("task_id", "task_id"),
    ("external_task_id", "consumer_external_task_id"),
    ("action", "action"),
    ("model", "model_name"),
    ("mode", "mode"),
    ("duration", "duration"),
    ("status", "status"),
    ("reserved_quota", "reserved_quota"),
    ("charged_quota", "charged_quota"),
    ("created_at", "created_at"),
    ("finished_at", "finished_at"),
)
CSV_BATCH = 2000
# A spreadsheet runs a cell starting with one of these as a formula; external_task_id is
# whatever the consumer sent.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def consumer_task_rows(period: Period, owner_id: int) -> Iterator[list[Any]]:
    """The consumer's tasks created in the period, oldest first, as CSV rows.

    Read in batches along the primary key rather than with one `.iterator()`: MySQL's
    client library buffers a whole result set in memory, so only short queries keep a
    large export's memory flat on MariaDB (and no query stays open while the client reads).
    """
    yield [name for name, _ in CSV_COLUMNS]
    tasks = tasks_in_period(period, owner_id).order_by("id")
    columns = [column for _, column in CSV_COLUMNS]
    last_id = 0
    while True:
        batch = list(tasks.filter(id__gt=last_id).values_list(*columns)[:CSV_BATCH])
        for row in batch:
            yield [_csv_value(value) for value in row]
        if len(batch) < CSV_BATCH:
            return
        last_id = batch[-1][0]


def recent_ledger(owner_id: int, limit: int = ATTENTION_ROWS) -> list[LedgerEntry]:
    return list(
        LedgerEntry.objects.filter(account_id=owner_id)
        .select_related("api_key")
        .order_by("-id")[:limit]
    )
