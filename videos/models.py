from django.db import models

from billing.models import Account, ApiKey
from channels_app.models import Channel

# Submit paths of Kling's video API that create tasks (the last path segment).
VIDEO_ACTIONS = (
    "text2video",
    "image2video",
    "multi-image2video",
    "omni-video",
    "video-extend",
    "lip-sync",
    "effects",
)


class TaskStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # created here, not yet accepted by Kling
    SUBMITTED = "submitted", "Submitted"
    PROCESSING = "processing", "Processing"
    SUCCEED = "succeed", "Succeeded"
    FAILED = "failed", "Failed"


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEED, TaskStatus.FAILED})
# Status only moves forward along this order; terminal states are final.
STATUS_RANK = {
    TaskStatus.PENDING: 0,
    TaskStatus.SUBMITTED: 1,
    TaskStatus.PROCESSING: 2,
    TaskStatus.SUCCEED: 3,
    TaskStatus.FAILED: 3,
}


class VideoTask(models.Model):
    """One consumer request for a video. `id` is sent to Kling as `external_task_id`."""

    task_id = models.CharField(
        max_length=64, unique=True, null=True, blank=True, help_text="Kling's task id."
    )
    owner = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="tasks")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    channel = models.ForeignKey(
        Channel, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks"
    )
    action = models.CharField(max_length=40)
    model_name = models.CharField(max_length=100)
    mode = models.CharField(max_length=20, blank=True)
    duration = models.CharField(max_length=10, blank=True)
    status = models.CharField(max_length=12, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    failure_reason = models.TextField(blank=True)
    request_body = models.JSONField(help_text="The consumer's request body, as received.")
    consumer_external_task_id = models.CharField(max_length=255, blank=True)
    consumer_callback_url = models.URLField(max_length=2048, blank=True)
    upstream_payload = models.JSONField(
        null=True, blank=True, help_text="The latest task object Kling sent (query or callback)."
    )
    video_id = models.CharField(max_length=128, blank=True)
    video_url = models.URLField(max_length=2048, blank=True)
    reserved_quota = models.PositiveBigIntegerField(default=0)
    charged_quota = models.PositiveBigIntegerField(default=0)
    channels_tried = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the reconciler should next ask Kling about this unfinished task (NULL once
    # finished); every piece of news pushes it back, each fruitless check backs it off.
    next_check_at = models.DateTimeField(null=True, blank=True)
    check_count = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["video_id"]),
            models.Index(fields=["status", "updated_at"]),
            models.Index(fields=["status", "next_check_at"]),
            models.Index(fields=["created_at"]),
            models.Index(fields=["owner", "consumer_external_task_id"]),
            models.Index(fields=["consumer_external_task_id"]),
            models.Index(fields=["owner", "action", "-id"]),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.status}"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class CallbackEvent(models.Model):
    """A callback exactly as it arrived. Append-only: stored before it is acted on."""

    class Outcome(models.TextChoices):
        RECEIVED = "received", "Received, not yet processed"
        APPLIED = "applied", "Applied"
        STALE = "stale", "Duplicate or out of date: nothing changed"
        UNMATCHED = "unmatched", "No task matches"
        BAD_TOKEN = "bad_token", "Token missing or wrong: ignored"
        INVALID = "invalid", "Not a Kling task object"

    # Outcomes that mean a callback was not acted on (alerts, dashboard).
    FAILED_OUTCOMES = (Outcome.BAD_TOKEN, Outcome.UNMATCHED, Outcome.INVALID)

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    body = models.TextField(help_text="The raw body as received.")
    headers = models.JSONField(default=dict)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    # The token of the callback URL, kept so an event interrupted by a crash can be
    # processed again later exactly as it arrived.
    token = models.CharField(max_length=64, blank=True)
    task = models.ForeignKey(
        VideoTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="callbacks"
    )
    outcome = models.CharField(max_length=12, choices=Outcome.choices, default=Outcome.RECEIVED)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["outcome", "received_at"])]

    def __str__(self) -> str:
        return f"callback #{self.pk} {self.outcome}"


class CallbackDelivery(models.Model):
    """One status change forwarded to a consumer's own callback_url, retried until delivered.

    Created in the same transaction as the status change it reports, so a change is never
    committed without its delivery, and a worker that dies mid-delivery leaves a row the
    next sweep picks up.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        GAVE_UP = "gave_up", "Gave up"

    task = models.ForeignKey(VideoTask, on_delete=models.CASCADE, related_name="deliveries")
    url = models.URLField(max_length=2048)
    body = models.TextField(help_text="The exact JSON body sent (and signed).")
    task_status = models.CharField(max_length=12)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"delivery #{self.pk} of task {self.task_id} ({self.state})"


class AlertState(models.Model):
    """When an alert of one kind was last sent. Several reconcilers run check_alerts at
    once; claiming this row with a conditional update lets only one of them send."""

    kind = models.CharField(max_length=40, unique=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"alert {self.kind} last sent {self.last_sent_at or 'never'}"
