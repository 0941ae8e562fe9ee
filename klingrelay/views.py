"""Operator endpoints: GET /metrics (Prometheus) and GET /healthz (load balancers)."""

import ipaddress
import logging
import os
from collections.abc import Iterator

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from channels_app.models import Channel
from videos import reconcile
from videos.models import CallbackDelivery, VideoTask

logger = logging.getLogger(__name__)

# A request carrying one of these came through a proxy, so REMOTE_ADDR is the proxy's
# address, not the client's: it proves nothing about who is asking.
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


# --- /metrics ----------------------------------------------------------------------


@require_safe
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        return HttpResponseForbidden("Forbidden\n", content_type="text/plain")
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


def scrape_allowed(request: HttpRequest) -> bool:
    """With METRICS_TOKEN set, the bearer token decides; otherwise the caller's address,
    and only for a direct connection."""
    if settings.METRICS_TOKEN:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and constant_time_compare(
            given.strip(), settings.METRICS_TOKEN
        )
    if any(header in request.META for header in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(allowed, strict=False)
        for allowed in settings.METRICS_ALLOWED_IPS
    )


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: the counters, plus the database gauges read once.

    Under gunicorn each worker counts in its own files in PROMETHEUS_MULTIPROC_DIR and any
    worker may serve the scrape, so the counters are read from the files of all of them.
    The database gauges are registered here, per scrape, and never on a shared registry,
    so they appear once, not once per worker.
    """
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(ThisProcessMetrics())
    registry.register(DatabaseGauges())
    return registry


class ThisProcessMetrics:
    """Single-process mode: everything on prometheus_client's default registry."""

    def collect(self) -> Iterator[Metric]:
        return REGISTRY.collect()


class DatabaseGauges:
    """Gauges counted in the database at scrape time, each from an indexed query.

    If the database cannot answer, the scrape still succeeds with
    klingrelay_database_up 0, so the counters stay visible while the database is down.
    """

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._families()
        except DatabaseError as error:
            logger.warning("metrics: database gauges unavailable: %s", type(error).__name__)
            families = []
        up = GaugeMetricFamily(
            "klingrelay_database_up", "1 when the database gauges could be read, else 0."
        )
        up.add_metric([], 1 if families else 0)
        yield up
        yield from families

    @staticmethod
    def _families() -> list[Metric]:
        unfinished = GaugeMetricFamily(
            "klingrelay_tasks_unfinished",
            "Tasks not yet finished, by status (pending, submitted, processing).",
            labels=["status"],
        )
        by_status = _count_by(VideoTask.objects.filter(status__in=reconcile.UNFINISHED), "status")
        for status in reconcile.UNFINISHED:
            unfinished.add_metric([str(status)], by_status.get(status, 0))

        stuck = GaugeMetricFamily(
            "klingrelay_tasks_stuck",
            "Unfinished tasks with no news for STUCK_AFTER seconds.",
            value=reconcile.stuck_tasks().count(),
        )

        channels = GaugeMetricFamily(
            "klingrelay_channels",
            "Channels by status (enabled, disabled, auto_disabled).",
            labels=["status"],
        )
        channel_counts = _count_by(Channel.objects.all(), "status")
        for status in Channel.Status:
            channels.add_metric([status.name.lower()], channel_counts.get(status.value, 0))

        pending = GaugeMetricFamily(
            "klingrelay_consumer_callbacks_pending",
            "Callbacks to consumers not yet delivered nor given up.",
            value=CallbackDelivery.objects.filter(state=CallbackDelivery.State.PENDING).count(),
        )
        return [unfinished, stuck, channels, pending]


def _count_by(queryset, field: str) -> dict:
    # order_by() drops the model's default ordering, which would split the GROUP BY.
    return dict(queryset.order_by().values_list(field).annotate(count=Count("pk")))


# --- /healthz ----------------------------------------------------------------------


@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Up when the database answers. The reason given is the error's class only: a
    driver's message may name hosts and users."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:  # whatever stops the query makes this instance unhealthy
        logger.warning("healthz: database check failed: %s", type(error).__name__)
        return JsonResponse(
            {"status": "error", "database": f"unavailable ({type(error).__name__})"}, status=503
        )
    return JsonResponse({"status": "ok", "database": "ok"})
