import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.http import StreamingHttpResponse
from django.template import engines
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import LedgerEntry
from channels_app.models import Channel
from videos import dashboard
from videos.dashboard import format_seconds, get_period, percentile

from .conftest import make_consumer
from .dashboard_data import FAILED, SUCCEED, add_task, build_sample_data, make_staff

pytestmark = pytest.mark.django_db

DASHBOARD_PERMISSIONS = ("videos.view_videotask", "billing.view_ledgerentry")


@pytest.fixture
def data():
    return build_sample_data()


@pytest.fixture
def staff_client(client):
    client.force_login(make_staff("operator", permissions=DASHBOARD_PERMISSIONS))
    return client


def dashboard_url(period: str | None = None) -> str:
    url = reverse("admin:dashboard")
    return f"{url}?period={period}" if period else url


def usage_url(account, period: str | None = None) -> str:
    url = reverse("admin:dashboard_consumer", args=[account.pk])
    return f"{url}?period={period}" if period else url


def csv_url(account, period: str = "7d") -> str:
    return reverse("admin:dashboard_consumer_csv", args=[account.pk]) + f"?period={period}"


def by_label(rows) -> dict:
    return {row.label: row for row in rows}


def cell_text(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert match, element_id
    return match.group(1)


# --- the numbers ---------------------------------------------------------------------------


def test_dashboard_counts_rates_times_and_charges_of_the_last_7_days(staff_client, data):
    response = staff_client.get(dashboard_url("7d"))

    assert response.status_code == 200
    report = response.context["report"]
    total = report.total
    assert (total.submitted, total.succeeded, total.failed, total.running) == (7, 4, 2, 1)
    assert total.success_percent == "66.7%"
    # Succeeded tasks took 60, 120, 180 and 600 s: interpolated median 150 s, p95 537 s.
    assert total.median_seconds == 150
    assert total.p95_seconds == pytest.approx(537)
    assert total.charged == 900  # the charge rows of 4 tasks; the 10-day-old one is outside

    channels = by_label(report.channels)
    assert set(channels) == {"alpha", "beta"}
    alpha, beta = channels["alpha"], channels["beta"]
    assert (alpha.submitted, alpha.succeeded, alpha.failed, alpha.running) == (4, 3, 1, 0)
    assert (alpha.success_percent, alpha.median_seconds, alpha.charged) == ("75.0%", 120, 550)
    assert (beta.submitted, beta.succeeded, beta.failed, beta.running) == (3, 1, 1, 1)
    assert (beta.success_percent, beta.median_seconds, beta.charged) == ("50.0%", 600, 350)

    models = by_label(report.models)
    assert (models["kling-v1"].submitted, models["kling-v1"].failed) == (4, 2)
    assert (models["kling-v1"].success_percent, models["kling-v1"].charged) == ("50.0%", 200)
    v2 = models["kling-v2-master"]
    assert (v2.submitted, v2.succeeded, v2.running, v2.charged) == (3, 2, 1, 700)
    assert (v2.median_seconds, v2.p95_seconds) == (390, pytest.approx(579))

    consumers = by_label(report.consumers)
    assert (consumers["alice"].submitted, consumers["alice"].charged) == (4, 550)
    assert (consumers["bob"].submitted, consumers["bob"].charged) == (3, 350)

    days = {day.key: day for day in report.days}
    assert len(days) == 7 and list(days) == sorted(days)
    three_days_ago = timezone.localdate(data.tasks[2].created_at)
    assert days[three_days_ago].submitted == 3
    assert sum(day.submitted for day in days.values()) == 7
    assert sum(day.charged for day in days.values()) == 900  # booked when each task finished

    # What the page shows, not only what it was given.
    html = response.text
    assert cell_text(html, "total-submitted") == "7"
    assert cell_text(html, "total-success-rate") == "66.7%"
    assert cell_text(html, "total-median") == "2m 30s"
    assert cell_text(html, "total-p95") == "8m 57s"
    assert cell_text(html, "total-charged") == "900"


def test_period_switch_changes_the_window(staff_client, data):
    day = staff_client.get(dashboard_url("24h")).context["report"].total
    month = staff_client.get(dashboard_url("30d")).context["report"].total
    unknown = staff_client.get(dashboard_url("1y"))

    assert (day.submitted, day.succeeded, day.failed, day.charged) == (4, 2, 1, 200)
    assert (day.median_seconds, day.success_percent) == (90, "66.7%")
    assert (month.submitted, month.succeeded, month.failed, month.charged) == (8, 5, 2, 1000)
    assert month.median_seconds == 180
    assert unknown.context["period"].key == "7d"  # anything else is the default
    assert len(unknown.context["report"].days) == 7
    assert len(staff_client.get(dashboard_url("30d")).context["report"].days) == 30
    html = staff_client.get(dashboard_url("24h")).text
    assert '<strong aria-current="page">Last 24 hours</strong>' in html
    assert '<a href="?period=30d">Last 30 days</a>' in html


def test_needs_attention_lists_stuck_failed_disabled_and_undelivered(staff_client, data):
    response = staff_client.get(dashboard_url())

    attention = response.context["attention"]
    stuck = data.tasks[-1]
    assert attention.stuck_count == 1 and attention.stuck == [stuck]
    assert [task.task_id for task in attention.failed] == ["kling-7", "kling-4"]
    assert [channel.name for channel in attention.disabled_channels] == ["gamma"]
    assert attention.callbacks_not_applied == {"bad_token": 1, "unmatched": 1}
    assert attention.gave_up_count == 1
    html = response.text
    assert reverse("admin:videos_videotask_change", args=[stuck.pk]) in html
    assert reverse("admin:channels_app_channel_change", args=[data.channels["gamma"].pk]) in html
    assert "account balance is empty" in html
    assert "?outcome__exact=bad_token" in html
    assert reverse("admin:videos_callbackdelivery_change", args=[attention.gave_up[0].pk]) in html
    assert "Service Unavailable" in html


def test_health_counts_from_the_alerts_are_shown_first(staff_client, data, settings):
    settings.ALERT_DISABLED_CHANNELS = 1
    settings.ALERT_STUCK_TASKS = 10

    response = staff_client.get(dashboard_url())

    health = {card["label"]: card for card in response.context["health"]}
    assert health["Stuck tasks"]["count"] == 1 and not health["Stuck tasks"]["alert"]
    assert health["Disabled channels"]["count"] == 1 and health["Disabled channels"]["alert"]
    assert response.text.index('id="health"') < response.text.index('id="summary"')


def test_rows_link_into_the_admin(staff_client, data):
    html = staff_client.get(dashboard_url("7d")).text

    alice = data.consumers["alice"]
    assert f'href="{usage_url(alice, "7d")}"' in html
    assert reverse("admin:channels_app_channel_change", args=[data.channels["alpha"].pk]) in html
    tasks = reverse("admin:videos_videotask_changelist")
    assert f'href="{tasks}?channel__id__exact={data.channels["beta"].pk}"' in html
    assert f'href="{tasks}?model_name=kling-v2-master"' in html


def test_chart_data_is_handed_over_as_json_and_chart_js_comes_from_our_static_files(
    staff_client, data
):
    response = staff_client.get(dashboard_url("7d"))

    html = response.text
    match = re.search(
        r'<script id="dashboard-chart-data" type="application/json">(.*?)</script>', html
    )
    chart = json.loads(match.group(1))
    assert sum(chart["days"]["succeeded"]) == 4 and sum(chart["days"]["failed"]) == 2
    assert sum(chart["days"]["running"]) == 1
    assert {"label": "alpha", "rate": 75.0} in chart["channels"]
    assert '<script src="/static/videos/vendor/chartjs/chart.umd.js" defer>' in html
    assert "cdn" not in html.lower()
    # The tables carry the same numbers for a browser without JavaScript.
    assert '<div class="chart" hidden>' in html
    assert 'id="days"' in html and 'id="channels"' in html

    script = staff_client.get("/static/videos/vendor/chartjs/chart.umd.js")
    assert script.status_code == 200  # served by WhiteNoise
    assert b"Chart.js v4.6.1" in b"".join(script.streaming_content)[:200]


def test_a_name_that_looks_like_markup_is_escaped_in_the_page_and_the_chart_data(
    staff_client, data
):
    data.channels["alpha"].name = "</script><b>alpha"
    data.channels["alpha"].save()

    html = staff_client.get(dashboard_url()).text

    assert "</script><b>alpha" not in html
    assert "&lt;/script&gt;&lt;b&gt;alpha" in html
    assert "\\u003C/script\\u003E\\u003Cb\\u003Ealpha" in html  # json_script's escaping


def test_an_empty_database_shows_dashes_not_errors(staff_client):
    response = staff_client.get(dashboard_url())

    assert response.status_code == 200
    assert cell_text(response.text, "total-success-rate") == "–"
    assert cell_text(response.text, "total-median") == "–"
    assert "No tasks in this period." in response.text


# --- who may see it -------------------------------------------------------------------------


def test_admin_index_links_to_the_dashboard(admin_client):
    html = admin_client.get(reverse("admin:index")).text

    assert f'href="{reverse("admin:dashboard")}"' in html
    assert "Kling Relay" in html  # the default admin is still the one served


@pytest.mark.parametrize(
    "url",
    [
        lambda data: dashboard_url(),
        lambda data: usage_url(data.consumers["alice"]),
        lambda data: csv_url(data.consumers["alice"]),
    ],
)
def test_anonymous_users_are_sent_to_the_login_page(client, data, url):
    target = url(data)

    response = client.get(target)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize(
    "url",
    [
        lambda data: dashboard_url(),
        lambda data: usage_url(data.consumers["alice"]),
        lambda data: csv_url(data.consumers["alice"]),
    ],
)
def test_non_staff_and_staff_without_permission_are_refused(client, data, url):
    target = url(data)
    client.force_login(data.consumers["alice"].user)

    response = client.get(target)
    assert response.status_code == 302  # the admin's login page, as for anyone not staff
    assert response["Location"].startswith(reverse("admin:login"))

    client.force_login(make_staff("support", permissions=("billing.view_apikey",)))
    assert client.get(target).status_code == 403
    html = client.get(reverse("admin:index")).text
    assert reverse("admin:dashboard") not in html


# --- one consumer -----------------------------------------------------------------------------


def test_consumer_usage_page(staff_client, data):
    alice = data.consumers["alice"]

    response = staff_client.get(usage_url(alice, "7d"))

    assert response.status_code == 200
    report = response.context["report"]
    assert (report.total.submitted, report.total.succeeded, report.total.failed) == (4, 3, 1)
    assert report.total.success_percent == "75.0%"
    assert report.total.charged == 550
    assert report.consumers == []
    models = by_label(report.models)
    assert (models["kling-v1"].charged, models["kling-v2-master"].charged) == (200, 350)
    assert sum(response.context["chart_data"]["days"]["succeeded"]) == 3
    ledger = response.context["ledger"]
    assert ledger[0].kind == LedgerEntry.Kind.CHARGE and ledger[-1].kind == LedgerEntry.Kind.TOPUP
    assert all(entry.account_id == alice.pk for entry in ledger)
    html = response.text
    assert "<h1>Usage: alice</h1>" in html
    assert f'href="{csv_url(alice, "7d")}"' in html
    assert cell_text(html, "total-charged") == "550"


def test_consumer_page_links_to_usage_and_unknown_consumer_is_404(admin_client, data):
    alice = data.consumers["alice"]

    html = admin_client.get(reverse("admin:billing_account_change", args=[alice.pk])).text

    assert f'href="{reverse("admin:dashboard_consumer", args=[alice.pk])}"' in html
    assert admin_client.get(reverse("admin:dashboard_consumer", args=[999999])).status_code == 404
    response = admin_client.get(reverse("admin:dashboard_consumer_csv", args=[999999]))
    assert response.status_code == 404


def read_csv(response) -> list[list[str]]:
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def test_csv_export_streams_the_consumers_tasks_of_the_period(staff_client, data):
    alice = data.consumers["alice"]

    response = staff_client.get(csv_url(alice, "7d"))

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    today = timezone.localdate().strftime("%Y%m%d")
    assert response["Content-Disposition"] == (f'attachment; filename="tasks-alice-7d-{today}.csv"')
    header, *rows = read_csv(response)
    assert header == [
        "id",
        "task_id",
        "external_task_id",
        "action",
        "model",
        "mode",
        "duration",
        "status",
        "reserved_quota",
        "charged_quota",
        "created_at",
        "finished_at",
    ]
    tasks = [task for task in data.tasks[2:] if task.owner_id == alice.pk]
    assert [row[0] for row in rows] == [str(task.pk) for task in tasks]  # oldest first
    first = tasks[0]
    assert rows[0] == [
        str(first.pk),
        first.task_id,
        "",
        "text2video",
        "kling-v2-master",
        "std",
        "5",
        SUCCEED,
        "350",
        "350",
        first.created_at.isoformat(),
        first.finished_at.isoformat(),
    ]
    assert [row[7] for row in rows] == [SUCCEED, FAILED, SUCCEED, SUCCEED]


def test_csv_export_reads_in_batches_and_defuses_spreadsheet_formulas(
    staff_client, data, monkeypatch
):
    monkeypatch.setattr(dashboard, "CSV_BATCH", 2)
    carol = make_consumer("carol")
    tasks = [
        add_task(
            age=timedelta(minutes=50 - n),
            owner=carol,
            channel=None,
            model="kling-v1",
            status=SUCCEED,
            consumer_external_task_id=f"carol-{n}",
        )
        for n in range(4)
    ]
    add_task(
        age=timedelta(minutes=1),
        owner=carol,
        channel=None,
        model="kling-v1",
        consumer_external_task_id='=HYPERLINK("https://evil.test","x")',
    )

    with CaptureQueriesContext(connection) as queries:
        _header, *rows = read_csv(staff_client.get(csv_url(carol, "24h")))

    assert [row[2] for row in rows[:4]] == [f"carol-{n}" for n in range(4)]
    assert [row[0] for row in rows[:4]] == [str(task.pk) for task in tasks]
    assert rows[4][2] == '\'=HYPERLINK("https://evil.test","x")'
    batches = [q for q in queries if "consumer_external_task_id" in q["sql"]]
    assert len(batches) == 3  # 2 + 2 + 1 rows: the last batch is short, so it stops


# --- cost -----------------------------------------------------------------------------------


def test_query_count_does_not_grow_with_the_rows(staff_client, data, django_assert_max_num_queries):
    pages = [dashboard_url("30d"), usage_url(data.consumers["alice"], "30d")]
    counts = []
    for page in pages:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(page).status_code == 200
        counts.append(len(queries))

    # Many more tasks, channels, models, consumers and charges (newer than the others,
    # as new rows are).
    channels = [Channel.objects.create(name=f"extra{n}", key="ak|sk") for n in range(3)]
    for number in range(30):
        owner = make_consumer(f"consumer{number}", quota=10)
        channel = channels[number % 3] if number % 2 else data.channels["beta"]
        add_task(
            age=timedelta(minutes=60 - number),
            owner=owner if number % 3 else data.consumers["alice"],
            channel=channel,
            model=f"model-{number % 4}",
            status=SUCCEED if number % 5 else FAILED,
            seconds=30 + number * 7,
            charge=10 if number % 5 else 0,
        )

    for page, count in zip(pages, counts, strict=True):
        with django_assert_max_num_queries(count):
            assert staff_client.get(page).status_code == 200


def test_period_queries_use_the_primary_key_range(data):
    period = get_period("7d")
    last_before = data.tasks[1]  # 10 days old; the next one is 3 days old

    assert dashboard.first_id_after(period.since) == last_before.pk
    sql = str(dashboard.tasks_in_period(period).query).replace("`", '"')
    assert f'"videos_videotask"."id" > {last_before.pk}' in sql
    assert dashboard.first_id_after(timezone.now() - timedelta(days=365)) == 0


# --- pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "fraction", "expected"),
    [
        ({}, 0.5, None),
        ({42: 1}, 0.95, 42),
        ({60: 1, 120: 1}, 0.5, 90),
        ({60: 1, 120: 1, 180: 1}, 0.5, 120),
        ({10: 99, 1000: 1}, 0.95, 10),
        ({10: 90, 20: 10}, 0.95, 20),
        ({1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, 0.95, 4.8),
    ],
)
def test_percentile_interpolates_between_ranks(counts, fraction, expected):
    assert percentile(counts, fraction) == (
        pytest.approx(expected) if expected is not None else None
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "–"), (0, "0s"), (59.6, "1m 00s"), (150, "2m 30s"), (3600, "1h 00m"), (5000, "1h 23m")],
)
def test_durations_read_as_minutes_and_hours(seconds, shown):
    assert format_seconds(seconds) == shown


def test_seven_days_start_at_midnight_six_days_ago(settings):
    settings.TIME_ZONE = "Asia/Shanghai"
    now = timezone.now()

    period = get_period("7d", now=now)

    local_since = timezone.localtime(period.since)
    assert (local_since.hour, local_since.minute) == (0, 0)
    assert timezone.localdate(now) - local_since.date() == timedelta(days=6)
    assert get_period("24h", now=now).since == now - timedelta(hours=24)


def test_static_files_collect_for_production(settings, tmp_path):
    """collectstatic with the production storage: hashed names for Chart.js and its map."""
    settings.STORAGES = settings.STORAGES | {
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}
    }
    settings.STATIC_ROOT = tmp_path

    call_command("collectstatic", interactive=False, verbosity=0)

    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    hashed = manifest["videos/vendor/chartjs/chart.umd.js"]
    assert hashed != "videos/vendor/chartjs/chart.umd.js"
    assert (tmp_path / hashed).exists() and (tmp_path / f"{hashed}.gz").exists()
    assert (tmp_path / "videos/vendor/chartjs/LICENSE.md").exists()
    template = engines["django"].from_string(
        "{% load static %}{% static 'videos/vendor/chartjs/chart.umd.js' %}"
    )
    assert template.render() == f"/static/{hashed}"
