"""The relay's Prometheus metrics, and the small functions the flows call to count.

Metrics are defined once here, on prometheus_client's default registry. Under gunicorn
with PROMETHEUS_MULTIPROC_DIR set, prometheus_client writes every process's values to
files in that directory and GET /metrics adds them up (see klingrelay/views.py); label
values stay few: routes and channel ids, never paths or task ids.
"""

from django.db import transaction
from prometheus_client import Counter, Histogram

# Seconds. Kling answers a submit in about a second but may take up to the read timeout.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Anything else a client sends as a method is counted as "other", so it cannot add series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "klingrelay_http_requests_total",
    "Requests answered by the relay, by URL route (not path), method and HTTP status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "klingrelay_http_request_duration_seconds",
    "Time to answer a request, by URL route and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "klingrelay_upstream_requests_total",
    "Calls to Kling, by channel id, method and outcome (HTTP status, or 'error' when "
    "Kling was not reached).",
    ["channel", "method", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "klingrelay_upstream_request_duration_seconds",
    "Time Kling took to answer (or to fail), by channel id and method.",
    ["channel", "method"],
    buckets=LATENCY_BUCKETS,
)
CALLBACKS = Counter(
    "klingrelay_callbacks_total",
    "Callbacks from Kling, by outcome (applied, stale, unmatched, bad_token, invalid).",
    ["outcome"],
)
CHARGES = Counter("klingrelay_charges_total", "Tasks charged (committed charges only).")
CHARGED_QUOTA = Counter("klingrelay_charged_quota_total", "Quota units charged.")
RESERVATIONS = Counter("klingrelay_reservations_total", "Quota reservations made at submit.")
RESERVED_QUOTA = Counter("klingrelay_reserved_quota_total", "Quota units reserved.")
RELEASES = Counter(
    "klingrelay_releases_total", "Reservations released (failed or abandoned tasks)."
)
RELEASED_QUOTA = Counter("klingrelay_released_quota_total", "Quota units released.")
DELIVERIES = Counter(
    "klingrelay_consumer_callback_deliveries_total",
    "Callbacks forwarded to consumers that reached a final state (delivered, gave_up).",
    ["state"],
)
DELIVERY_ATTEMPTS = Counter(
    "klingrelay_consumer_callback_attempts_total",
    "Attempts to deliver a callback to a consumer, by result (2xx, 3xx, 4xx, 5xx, error).",
    ["result"],
)


def _method_label(method: str) -> str:
    method = (method or "").upper()
    return method if method in _KNOWN_METHODS else "other"


def observe_http_request(*, route: str, method: str, status: int, seconds: float) -> None:
    method = _method_label(method)
    HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    HTTP_LATENCY.labels(route=route, method=method).observe(seconds)


def observe_upstream_call(*, channel_id: int, method: str, outcome: str, seconds: float) -> None:
    method = _method_label(method)
    UPSTREAM_REQUESTS.labels(channel=str(channel_id), method=method, outcome=outcome).inc()
    UPSTREAM_LATENCY.labels(channel=str(channel_id), method=method).observe(seconds)


def count_callback(outcome: str) -> None:
    CALLBACKS.labels(outcome=outcome).inc()


# Quota movements are counted only once their transaction commits: a charge that is
# rolled back (a failed save, a lost race) must never show in the metrics. Outside a
# transaction on_commit runs at once.
def count_charge_on_commit(amount: int) -> None:
    transaction.on_commit(lambda: _count(CHARGES, CHARGED_QUOTA, amount))


def count_reservation_on_commit(amount: int) -> None:
    transaction.on_commit(lambda: _count(RESERVATIONS, RESERVED_QUOTA, amount))


def count_release_on_commit(amount: int) -> None:
    transaction.on_commit(lambda: _count(RELEASES, RELEASED_QUOTA, amount))


def _count(events: Counter, units: Counter, amount: int) -> None:
    events.inc()
    units.inc(amount)


def count_delivery_attempt(status_code: int | None) -> None:
    result = "error" if status_code is None else f"{status_code // 100}xx"
    DELIVERY_ATTEMPTS.labels(result=result).inc()


def count_delivery_finished(state: str) -> None:
    DELIVERIES.labels(state=state).inc()
