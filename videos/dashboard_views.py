"""The operators' dashboard pages, served inside the admin (klingrelay/admin_site.py).

The admin site wraps every view here in `admin_view`: staff only, anyone else is sent to
the login page. The pages also show every consumer's usage and money, so they need the
permissions to view tasks and the ledger as well.
"""

import csv
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header, urlencode

from billing.models import Account

from .alerts import alert_thresholds, collect_health_counts
from .dashboard import (
    PERIODS,
    Outcomes,
    Period,
    PeriodReport,
    consumer_task_rows,
    get_period,
    needs_attention,
    period_report,
    recent_ledger,
)

DASHBOARD_PERMISSIONS = ("videos.view_videotask", "billing.view_ledgerentry")


def can_view_dashboard(request: HttpRequest) -> bool:
    return (
        request.user.is_active
        and request.user.is_staff
        and request.user.has_perms(DASHBOARD_PERMISSIONS)
    )


def _check_permission(request: HttpRequest) -> None:
    if not can_view_dashboard(request):
        raise PermissionDenied


def dashboard(request: HttpRequest) -> TemplateResponse:
    _check_permission(request)
    period = get_period(request.GET.get("period"))
    report = period_report(period)
    link_groups(report, period)
    attention = needs_attention(period)
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "period": period,
        "periods": PERIODS,
        "report": report,
        "attention": attention,
        "health": health_cards(),
        "chart_data": {
            "days": day_series(report.days),
            "channels": [
                {"label": channel.label, "rate": round(channel.success_rate * 100, 1)}
                for channel in report.channels
                if channel.success_rate is not None
            ],
        },
    }
    return TemplateResponse(request, "admin/dashboard/dashboard.html", context)


def consumer_usage(request: HttpRequest, account_id: int) -> TemplateResponse:
    _check_permission(request)
    account = get_object_or_404(Account.objects.select_related("user"), pk=account_id)
    period = get_period(request.GET.get("period"))
    report = period_report(period, owner_id=account.pk)
    link_groups(report, period, owner_id=account.pk)
    context = {
        **admin.site.each_context(request),
        "title": f"Usage: {account}",
        "account": account,
        "period": period,
        "periods": PERIODS,
        "report": report,
        "ledger": recent_ledger(account.pk),
        "chart_data": {"days": day_series(report.days)},
    }
    return TemplateResponse(request, "admin/dashboard/consumer.html", context)


class _Echo:
    """A file-like object whose write() hands back the line csv.writer made."""

    def write(self, value: str) -> str:
        return value


def consumer_tasks_csv(request: HttpRequest, account_id: int) -> StreamingHttpResponse:
    """The consumer's tasks of the period as CSV, written while it is read."""
    _check_permission(request)
    account = get_object_or_404(Account.objects.select_related("user"), pk=account_id)
    period = get_period(request.GET.get("period"))
    writer = csv.writer(_Echo())
    rows = consumer_task_rows(period, account.pk)
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8"
    )
    filename = f"tasks-{account}-{period.key}-{timezone.localdate():%Y%m%d}.csv"
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response


def tasks_url(**filters: Any) -> str:
    """The admin's task list, filtered (its list_filter parameters)."""
    return f"{reverse('admin:videos_videotask_changelist')}?{urlencode(filters)}"


def link_groups(report: PeriodReport, period: Period, owner_id: int | None = None) -> None:
    """Points each channel, model and consumer row at its page and at its tasks."""
    owner = {"owner__id__exact": owner_id} if owner_id else {}
    for channel in report.channels:
        if channel.key:
            channel.url = reverse("admin:channels_app_channel_change", args=[channel.key])
            channel.tasks_url = tasks_url(channel__id__exact=channel.key, **owner)
    for model in report.models:
        if model.key:
            model.tasks_url = tasks_url(model_name=model.key, **owner)
    for consumer in report.consumers:
        url = reverse("admin:dashboard_consumer", args=[consumer.key])
        consumer.url = f"{url}?{urlencode({'period': period.key})}"
        consumer.tasks_url = tasks_url(owner__id__exact=consumer.key)


def day_series(days: Iterable[Outcomes]) -> dict[str, list[Any]]:
    """Tasks per day for the stacked chart (given to the page with json_script)."""
    days = list(days)
    return {
        "labels": [day.label for day in days],
        "succeeded": [day.succeeded for day in days],
        "failed": [day.failed for day in days],
        "running": [day.running for day in days],
    }


def health_cards() -> list[dict[str, Any]]:
    """The alerting counts (videos.alerts), each with its threshold: what pages someone."""
    thresholds = alert_thresholds()
    return [
        {
            "label": kind.replace("_", " ").capitalize(),
            "count": count,
            "threshold": thresholds.get(kind, 0),
            "alert": 0 < thresholds.get(kind, 0) <= count,
        }
        for kind, count in asdict(collect_health_counts()).items()
    ]
