from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.formats import localize
from django.utils.html import format_html

from .forms import ChannelAdminForm
from .models import Channel
from .services import test_channel

admin.site.site_header = "Kling Relay"
admin.site.site_title = "Kling Relay admin"
admin.site.index_title = "Relay administration"


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    form = ChannelAdminForm
    list_display = [
        "name",
        "type",
        "masked_key",
        "base_url",
        "models",
        "priority",
        "weight",
        "status_detail",
        "request_count",
        "failure_count",
        "success_rate",
        "last_used_at",
    ]
    list_filter = ["status", "type"]
    # Never the key field: a search on it would let anyone probe for a secret.
    search_fields = ["name", "base_url", "model_names"]
    actions = ["test_and_enable", "enable", "disable"]
    readonly_fields = [
        "status",
        "disabled_reason",
        "disabled_at",
        "request_count",
        "failure_count",
        "last_used_at",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "type", "key", "base_url", "model_names"]}),
        ("Routing", {"fields": ["priority", "weight"]}),
        ("Status", {"fields": ["status", "disabled_reason", "disabled_at"]}),
        (
            "Usage",
            {
                "fields": [
                    "request_count",
                    "failure_count",
                    "last_used_at",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
    ]

    def get_fieldsets(self, request: HttpRequest, obj: Channel | None = None):
        return self.fieldsets if obj else self.fieldsets[:2]

    @admin.display(description="Keys")
    def masked_key(self, channel: Channel) -> str:
        return channel.masked_key

    @admin.display(description="Models")
    def models(self, channel: Channel) -> str:
        return ", ".join(channel.model_list) or "all"

    @admin.display(description="Status", ordering="status")
    def status_detail(self, channel: Channel) -> str:
        if channel.is_enabled:
            return channel.get_status_display()
        when = localize(timezone.localtime(channel.disabled_at)) if channel.disabled_at else ""
        return format_html(
            "{}<br><small>{}</small><br><small>{}</small>",
            channel.get_status_display(),
            channel.disabled_reason,
            when,
        )

    @admin.display(description="Success rate")
    def success_rate(self, channel: Channel) -> str:
        if not channel.request_count:
            return "-"
        return f"{1 - channel.failure_count / channel.request_count:.1%}"

    @admin.action(description="Enable selected channels", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        for channel in queryset:
            channel.enable()
            self.log_change(request, channel, "Enabled")
        self.message_user(request, f"Enabled {len(queryset)} channel(s).", messages.SUCCESS)

    @admin.action(description="Disable selected channels", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        channels = list(queryset)  # before the update, which may take them out of a status filter
        now = timezone.now()
        queryset.update(
            status=Channel.Status.DISABLED,
            disabled_reason=f"Disabled by {request.user.get_username()}",
            disabled_at=now,
            updated_at=now,
        )
        for channel in channels:
            self.log_change(request, channel, "Disabled")
        self.message_user(request, f"Disabled {len(channels)} channel(s).", messages.SUCCESS)

    @admin.action(
        description="Test selected channels at Kling (re-enable those that pass)",
        permissions=["change"],
    )
    def test_and_enable(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        for channel in queryset:
            was_enabled = channel.is_enabled
            result = test_channel(channel)
            if result.ok:
                note = "" if was_enabled else " and re-enabled"
                if not was_enabled:
                    self.log_change(request, channel, "Tested and re-enabled")
                self.message_user(
                    request, f"{channel}: test passed{note} ({result.detail}).", messages.SUCCESS
                )
            else:
                self.message_user(
                    request,
                    f"{channel}: test failed, left as it is: {result.detail}",
                    messages.ERROR,
                )
