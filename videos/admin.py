import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from billing.models import Account, Price

from .models import VIDEO_ACTIONS, CallbackDelivery, CallbackEvent, VideoTask
from .paginators import EstimatedCountPaginator

_LONG_STRING = 2000


def _shorten(value: Any) -> Any:
    """Base64 images make request bodies megabytes long: show only the start of long strings."""
    if isinstance(value, str) and len(value) > _LONG_STRING:
        return f"{value[:200]}… ({len(value)} characters)"
    if isinstance(value, dict):
        return {key: _shorten(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten(item) for item in value]
    return value


def pretty_json(value: Any) -> str:
    if value is None:
        return "-"
    text = json.dumps(_shorten(value), indent=2, ensure_ascii=False)
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)


def pretty_body(body: str) -> str:
    """A callback body as received: indented if it is JSON, verbatim otherwise."""
    try:
        return pretty_json(json.loads(body))
    except ValueError:
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', _shorten(body))


def task_admin_link(task: VideoTask | None) -> str:
    if task is None:
        return "-"
    url = reverse("admin:videos_videotask_change", args=[task.pk])
    return format_html('<a href="{}">#{} {}</a>', url, task.pk, task.task_id or "")


class OwnerFilter(admin.RelatedFieldListFilter):
    def field_choices(self, field, request, model_admin):
        # Account.__str__ reads the user: load them together instead of one query per account.
        accounts = Account.objects.select_related("user").order_by("user__username")
        return [(account.pk, str(account)) for account in accounts]


class ModelNameFilter(admin.SimpleListFilter):
    # Choices come from the price table: a DISTINCT over all tasks would scan millions of rows.
    title = "model"
    parameter_name = "model_name"

    def lookups(self, request, model_admin):
        names = Price.objects.order_by("model_name").values_list("model_name", flat=True)
        return [(name, name) for name in names.distinct()]

    def queryset(self, request, queryset):
        return queryset.filter(model_name=self.value()) if self.value() else queryset


class ActionFilter(admin.SimpleListFilter):
    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return [(action, action) for action in VIDEO_ACTIONS]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


class ReadOnlyAdminMixin:
    """What Kling, consumers and billing wrote is inspected here, never edited."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class CallbackEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CallbackEvent
    fields = ["received_at", "outcome", "detail", "remote_addr", "body_pretty"]
    readonly_fields = fields
    extra = 0
    show_change_link = True

    @admin.display(description="Body")
    def body_pretty(self, event: CallbackEvent) -> str:
        return pretty_body(event.body)


class CallbackDeliveryInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CallbackDelivery
    fields = [
        "task_status",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    readonly_fields = fields
    extra = 0
    show_change_link = True
    verbose_name_plural = "callbacks forwarded to the consumer"


@admin.register(VideoTask)
class VideoTaskAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "task_id",
        "owner",
        "action",
        "model_name",
        "mode",
        "duration",
        "status",
        "channel",
        "reserved_quota",
        "charged_quota",
        "created_at",
        "finished_at",
    ]
    list_filter = [
        "status",
        "channel",
        ("owner", OwnerFilter),
        ModelNameFilter,
        ActionFilter,
        "created_at",
    ]
    list_select_related = ["owner__user", "channel"]
    # Sorting on an unindexed column would sort millions of rows; the id follows creation.
    sortable_by = ["id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    search_fields = ["task_id", "consumer_external_task_id", "id", "video_id"]
    search_help_text = "Exact Kling task id, consumer external_task_id, relay id or video id."
    inlines = [CallbackEventInline, CallbackDeliveryInline]
    fieldsets = [
        (None, {"fields": ["id", "task_id", "status", "failure_reason", "owner", "api_key"]}),
        ("Request", {"fields": ["action", "model_name", "mode", "duration", "request_pretty"]}),
        ("Consumer", {"fields": ["consumer_external_task_id", "consumer_callback_url"]}),
        ("Upstream", {"fields": ["channel", "channels_tried", "upstream_pretty"]}),
        ("Result", {"fields": ["video_id", "video_link"]}),
        ("Billing", {"fields": ["reserved_quota", "charged_quota"]}),
        ("Times", {"fields": ["created_at", "submitted_at", "updated_at", "finished_at"]}),
        ("Reconciler", {"fields": ["next_check_at", "check_count"]}),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        # Exact matches only: the admin's default LIKE lookups cannot use the indexes.
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(task_id=term) | Q(consumer_external_task_id=term) | Q(video_id=term)
        if term.isdigit():
            match |= Q(pk=int(term))
        return queryset.filter(match), False

    @admin.display(description="Request body")
    def request_pretty(self, task: VideoTask) -> str:
        return pretty_json(task.request_body)

    @admin.display(description="Latest Kling payload")
    def upstream_pretty(self, task: VideoTask) -> str:
        return pretty_json(task.upstream_payload)

    @admin.display(description="Video")
    def video_link(self, task: VideoTask) -> str:
        # The URL comes from Kling's payload, not a validated form: link only http(s).
        if not task.video_url.startswith(("https://", "http://")):
            return task.video_url or "-"
        return format_html(
            '<a href="{}" target="_blank" rel="noopener noreferrer">{}</a>',
            task.video_url,
            task.video_url,
        )


@admin.register(CallbackEvent)
class CallbackEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["received_at", "outcome", "task_link", "remote_addr", "detail"]
    list_filter = ["outcome"]
    list_select_related = ["task"]
    show_full_result_count = False
    fields = [
        "received_at",
        "outcome",
        "detail",
        "task_link",
        "remote_addr",
        "headers_pretty",
        "body_pretty",
    ]
    readonly_fields = fields

    @admin.display(description="Task")
    def task_link(self, event: CallbackEvent) -> str:
        return task_admin_link(event.task)

    @admin.display(description="Headers")
    def headers_pretty(self, event: CallbackEvent) -> str:
        return pretty_json(event.headers)

    @admin.display(description="Body")
    def body_pretty(self, event: CallbackEvent) -> str:
        return pretty_body(event.body)


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "task_link",
        "task_status",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["state"]
    list_select_related = ["task"]
    show_full_result_count = False
    fields = [
        "task_link",
        "url",
        "task_status",
        "state",
        "attempts",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "created_at",
        "delivered_at",
        "body_pretty",
    ]
    readonly_fields = fields

    @admin.display(description="Task")
    def task_link(self, delivery: CallbackDelivery) -> str:
        return task_admin_link(delivery.task)

    @admin.display(description="Body")
    def body_pretty(self, delivery: CallbackDelivery) -> str:
        return pretty_body(delivery.body)
