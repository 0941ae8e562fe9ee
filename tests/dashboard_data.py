"""Tasks, charges and troubles across channels, models, consumers and days, for the
dashboard's tests (test_dashboard.py, test_screenshots.py).

Rows are created oldest first, as the relay creates them: the dashboard finds a period's
first task along the primary key, which follows creation time.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from billing.models import Account, LedgerEntry
from channels_app.models import Channel
from videos.models import CallbackDelivery, CallbackEvent, TaskStatus, VideoTask

from .conftest import ACCESS_KEY, SECRET_KEY, make_consumer

SUCCEED, FAILED, PROCESSING = TaskStatus.SUCCEED, TaskStatus.FAILED, TaskStatus.PROCESSING

# (age, owner, channel, model, status, seconds to finish, quota charged)
TASKS = [
    (timedelta(days=40), "alice", "alpha", "kling-v1", SUCCEED, 30, 100),  # in no period
    (timedelta(days=10), "bob", "alpha", "kling-v1", SUCCEED, 240, 100),  # 30 days only
    (timedelta(days=3), "alice", "alpha", "kling-v2-master", SUCCEED, 180, 350),
    (timedelta(days=3), "bob", "beta", "kling-v2-master", SUCCEED, 600, 350),
    (timedelta(days=3), "alice", "alpha", "kling-v1", FAILED, 8, 0),
    (timedelta(hours=2), "alice", "alpha", "kling-v1", SUCCEED, 60, 100),
    (timedelta(hours=2), "alice", "alpha", "kling-v1", SUCCEED, 120, 100),
    (timedelta(hours=2), "bob", "beta", "kling-v1", FAILED, 5, 0),
    (timedelta(hours=2), "bob", "beta", "kling-v2-master", PROCESSING, None, 0),  # stuck
]


@dataclass
class SampleData:
    channels: dict[str, Channel]
    consumers: dict[str, Account]
    tasks: list[VideoTask]


def add_task(
    *,
    age: timedelta,
    owner: Account,
    channel: Channel | None,
    model: str,
    status: str = SUCCEED,
    seconds: int | None = 60,
    charge: int = 0,
    **fields,
) -> VideoTask:
    """A task created `age` ago and finished `seconds` later, charged through the ledger."""
    created = timezone.now() - age
    finished = created + timedelta(seconds=seconds) if seconds is not None else None
    task = VideoTask.objects.create(
        owner=owner,
        channel=channel,
        action="text2video",
        model_name=model,
        mode="std",
        duration="5",
        status=status,
        request_body={"prompt": "a cat"},
        reserved_quota=charge,
        charged_quota=charge,
        task_id=fields.pop("task_id", None),
        **fields,
    )
    # created_at and updated_at are set by Django on save: move them with an update.
    VideoTask.objects.filter(pk=task.pk).update(
        created_at=created, updated_at=finished or created, finished_at=finished
    )
    if charge:
        entry = LedgerEntry.objects.create(
            account=owner,
            kind=LedgerEntry.Kind.CHARGE,
            amount=-charge,
            balance_after=0,
            charged_task_id=task.pk,
        )
        LedgerEntry.objects.filter(pk=entry.pk).update(created_at=finished)
    task.refresh_from_db()
    return task


def build_sample_data() -> SampleData:
    channels = {
        name: Channel.objects.create(name=name, key=f"{ACCESS_KEY}|{SECRET_KEY}")
        for name in ("alpha", "beta", "gamma")
    }
    channels["gamma"].disable_automatically("Kling answered 1102: account balance is empty")
    consumers = {name: make_consumer(name, quota=10_000) for name in ("alice", "bob")}
    tasks = [
        add_task(
            age=age,
            owner=consumers[owner],
            channel=channels[channel],
            model=model,
            status=status,
            seconds=seconds,
            charge=charge,
            task_id=f"kling-{number}",
            failure_reason="Kling: the prompt was refused" if status == FAILED else "",
        )
        for number, (age, owner, channel, model, status, seconds, charge) in enumerate(TASKS)
    ]
    CallbackEvent.objects.create(body="{}", outcome=CallbackEvent.Outcome.BAD_TOKEN)
    CallbackEvent.objects.create(
        body='{"task_id": "nobody"}', outcome=CallbackEvent.Outcome.UNMATCHED, detail="no task"
    )
    CallbackEvent.objects.create(body="{}", task=tasks[-2], outcome=CallbackEvent.Outcome.APPLIED)
    now = timezone.now()
    CallbackDelivery.objects.create(
        task=tasks[-3],
        url="https://consumer.test/hook",
        body="{}",
        task_status=SUCCEED,
        state=CallbackDelivery.State.GAVE_UP,
        attempts=12,
        last_status_code=503,
        last_error="Service Unavailable",
        next_attempt_at=now,
        last_attempt_at=now,
    )
    return SampleData(channels=channels, consumers=consumers, tasks=tasks)


def make_staff(
    username: str,
    *,
    superuser: bool = False,
    permissions: tuple[str, ...] = (),
    password: str | None = None,  # hashing one takes a while: only to log in with it
):
    user = get_user_model().objects.create_user(
        username=username, password=password, is_staff=True, is_superuser=superuser
    )
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user
