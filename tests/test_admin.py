import json
import re
import time

import jwt
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import Account, ApiKey, LedgerEntry, hash_api_key
from billing.services import authenticate_access_key_token, authenticate_api_key
from channels_app.models import Channel
from tests.conftest import make_task
from videos.models import CallbackDelivery, CallbackEvent, TaskStatus, VideoTask

from .conftest import ACCESS_KEY, SECRET_KEY, make_consumer

pytestmark = pytest.mark.django_db


def url(name: str, *args) -> str:
    return reverse(f"admin:{name}", args=args)


def channel_form(**overrides) -> dict:
    data = {
        "name": "backup",
        "type": Channel.TYPE_KLING,
        "key": "new-access|new-secret-value",
        "base_url": "https://kling.example",
        "model_names": "kling-v1, kling-v1-6",
        "priority": 5,
        "weight": 2,
    }
    return data | overrides


# --- channels ----------------------------------------------------------------------


def test_channel_pages_never_show_the_keys(admin_client, channel):
    pages = [
        url("channels_app_channel_changelist"),
        url("channels_app_channel_change", channel.pk),
        url("channels_app_channel_history", channel.pk),
        url("channels_app_channel_delete", channel.pk),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert SECRET_KEY not in response.text, page
        assert ACCESS_KEY not in response.text, page
    assert "test…ey|****" in admin_client.get(pages[0]).text  # the masked key is listed


def test_channel_change_form_key_field_is_empty_with_masked_help(admin_client, channel):
    response = admin_client.get(url("channels_app_channel_change", channel.pk))

    form = response.context["adminform"].form
    assert form["key"].value() == ""
    assert form.fields["key"].help_text.startswith(
        f"Leave empty to keep the current keys ({channel.masked_key})"
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("no-pipe-secret", "expected exactly one &#x27;|&#x27;"),
        ("ak-only|", "the secret key (after &#x27;|&#x27;) is empty"),
        ("|sk-only-secret", "the access key (before &#x27;|&#x27;) is empty"),
        ("", "Enter at least one key as AK|SK"),
    ],
)
def test_adding_a_channel_with_a_malformed_key_shows_the_error(admin_client, key, message):
    response = admin_client.post(url("channels_app_channel_add"), channel_form(key=key))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["key"]
    assert message in response.text
    if key:
        assert key not in response.text  # not even the admin's own input is echoed back
    assert not Channel.objects.exists()


def test_adding_a_channel_then_editing_keeps_the_keys_when_the_field_is_empty(admin_client):
    response = admin_client.post(url("channels_app_channel_add"), channel_form())

    assert response.status_code == 302
    channel = Channel.objects.get(name="backup")
    assert channel.key == "new-access|new-secret-value"
    assert channel.model_list == ["kling-v1", "kling-v1-6"]

    change = url("channels_app_channel_change", channel.pk)
    response = admin_client.post(change, channel_form(key="", priority=9))
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.key == "new-access|new-secret-value"
    assert channel.priority == 9

    response = admin_client.post(change, channel_form(key="ak1|sk1\nak2|sk2"))
    assert response.status_code == 302
    channel.refresh_from_db()
    assert [c.access_key for c in channel.credentials()] == ["ak1", "ak2"]


def test_editing_a_channel_with_a_malformed_key_keeps_the_old_keys(admin_client, channel):
    change = url("channels_app_channel_change", channel.pk)
    response = admin_client.post(change, channel_form(name="primary", key="broken"))

    assert response.status_code == 200
    assert "expected exactly one" in response.text
    channel.refresh_from_db()
    assert channel.key == f"{ACCESS_KEY}|{SECRET_KEY}"


def test_disable_and_enable_actions(admin_client, admin_user, channel):
    changelist = url("channels_app_channel_changelist")
    other = Channel.objects.create(name="other", key="a|b")

    response = admin_client.post(
        changelist, {"action": "disable", "_selected_action": [channel.pk]}, follow=True
    )
    assert response.status_code == 200
    channel.refresh_from_db()
    assert channel.status == Channel.Status.DISABLED
    assert channel.disabled_reason == f"Disabled by {admin_user.username}"
    assert channel.disabled_at is not None
    assert Channel.objects.get(pk=other.pk).is_enabled
    assert f"Disabled by {admin_user.username}" in response.text

    admin_client.post(changelist, {"action": "enable", "_selected_action": [channel.pk]})
    channel.refresh_from_db()
    assert channel.status == Channel.Status.ENABLED
    assert channel.disabled_reason == ""
    assert channel.disabled_at is None


def test_enable_action_also_revives_an_auto_disabled_channel(admin_client, channel):
    channel.disable_automatically("upstream 401")
    admin_client.post(
        url("channels_app_channel_changelist"),
        {"action": "enable", "_selected_action": [channel.pk]},
    )
    channel.refresh_from_db()
    assert channel.is_enabled


# --- consumers, keys, prices, ledger -----------------------------------------------


def test_adding_a_consumer_creates_user_account_and_top_up(admin_client):
    response = admin_client.post(
        url("billing_account_add"), {"username": "bob", "initial_quota": 500}
    )

    assert response.status_code == 302
    user = get_user_model().objects.get(username="bob")
    assert not user.is_staff
    assert not user.has_usable_password()
    account = Account.objects.get(user=user)
    assert account.quota == 500
    entry = LedgerEntry.objects.get(account=account)
    assert (entry.kind, entry.amount, entry.balance_after) == (LedgerEntry.Kind.TOPUP, 500, 500)


def test_adding_a_consumer_without_quota_writes_no_ledger_row(admin_client):
    admin_client.post(url("billing_account_add"), {"username": "carol", "initial_quota": 0})

    account = Account.objects.get(user__username="carol")
    assert account.quota == 0
    assert not LedgerEntry.objects.filter(account=account).exists()


def test_adding_a_consumer_with_a_taken_username_creates_nothing(admin_client, account):
    response = admin_client.post(
        url("billing_account_add"), {"username": "alice", "initial_quota": 10}
    )

    assert response.status_code == 200
    assert "already exists" in response.text
    assert Account.objects.count() == 1
    assert LedgerEntry.objects.count() == 1  # the fixture's own top-up


def test_consumer_pages_load_and_quota_is_not_editable(admin_client, account, raw_key):
    make_consumer("dave")
    response = admin_client.get(url("billing_account_changelist"))
    assert response.status_code == 200
    rows = {a.user.username: a for a in response.context["cl"].result_list}
    assert rows["alice"].active_key_count == 1
    assert rows["dave"].active_key_count == 0

    change = url("billing_account_change", account.pk)
    response = admin_client.get(change)
    assert response.status_code == 200
    assert not response.context["adminform"].form.fields  # everything is read-only
    assert url("billing_account_top_up", account.pk) in response.text
    assert url("billing_account_issue_key", account.pk) in response.text
    assert ApiKey.objects.get().prefix in response.text  # the inline key list
    assert raw_key not in response.text

    admin_client.post(change, {"quota": 999999, "reserved": 5})
    account.refresh_from_db()
    assert (account.quota, account.reserved) == (1000, 0)


def test_top_up_changes_quota_and_writes_a_ledger_row(admin_client, account):
    page = url("billing_account_top_up", account.pk)
    assert admin_client.get(page).status_code == 200

    response = admin_client.post(page, {"amount": 250, "note": "bonus"})
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.quota == 1250
    entry = LedgerEntry.objects.filter(account=account).first()
    assert (entry.kind, entry.amount, entry.balance_after, entry.note) == (
        LedgerEntry.Kind.TOPUP,
        250,
        1250,
        "bonus",
    )

    admin_client.post(page, {"amount": -50, "note": ""})
    account.refresh_from_db()
    assert account.quota == 1200
    assert LedgerEntry.objects.filter(account=account).first().kind == LedgerEntry.Kind.ADJUSTMENT


@pytest.mark.parametrize(("amount", "message"), [(0, "non-zero"), (-5000, "cannot take 5000")])
def test_top_up_refuses_zero_and_overdrafts(admin_client, account, amount, message):
    response = admin_client.post(url("billing_account_top_up", account.pk), {"amount": amount})

    assert response.status_code == 200
    assert message in response.text
    account.refresh_from_db()
    assert account.quota == 1000
    assert LedgerEntry.objects.filter(account=account).count() == 1


def test_issuing_a_key_shows_it_once_and_stores_only_the_hash(admin_client, account):
    page = url("billing_account_issue_key", account.pk)
    assert admin_client.get(page).status_code == 200

    response = admin_client.post(page, {"name": "ci"}, follow=True)

    assert response.status_code == 200
    [shown] = [str(m) for m in response.context["messages"]]
    assert shown.startswith("New API key for alice (copy it now, it will not be shown again): ")
    raw = re.search(r"<code>(kr-[^<]+)</code>", shown).group(1)
    assert response.text.count(raw) == 1

    api_key = ApiKey.objects.get(account=account)
    assert api_key.name == "ci"
    assert api_key.key_hash == hash_api_key(raw)
    assert raw not in {api_key.prefix, api_key.key_hash, api_key.name}
    assert authenticate_api_key(raw) == api_key

    # The Kling-style pair shown with it signs tokens the relay accepts.
    assert f"access key <code>{api_key.access_key}</code>" in shown
    assert f"secret key <code>{api_key.secret_key}</code>" in shown
    assert api_key.webhook_secret in shown
    token = jwt.encode({"iss": api_key.access_key, "exp": int(time.time()) + 60},
                       api_key.secret_key, algorithm="HS256")  # fmt: skip
    assert authenticate_access_key_token(token) == api_key

    for page in (
        url("billing_account_change", account.pk),
        url("billing_apikey_changelist"),
        url("billing_apikey_change", api_key.pk),
    ):
        text = admin_client.get(page).text
        for secret in (raw, api_key.key_hash, api_key.secret_key, api_key.webhook_secret):
            assert secret not in text, page


def test_api_key_admin_lists_keys_without_hash_and_revokes(admin_client, account, raw_key):
    api_key = ApiKey.objects.get()
    for page in (url("billing_apikey_changelist"), url("billing_apikey_change", api_key.pk)):
        response = admin_client.get(page)
        assert response.status_code == 200
        assert api_key.prefix in response.text
        assert api_key.key_hash not in response.text
        assert raw_key not in response.text
    assert admin_client.get(url("billing_apikey_add")).status_code == 403

    admin_client.post(
        url("billing_apikey_changelist"), {"action": "revoke", "_selected_action": [api_key.pk]}
    )

    api_key.refresh_from_db()
    assert not api_key.is_active
    assert api_key.revoked_at is not None
    assert authenticate_api_key(raw_key) is None


def test_prices_are_editable_in_the_list(admin_client, prices):
    changelist = url("billing_price_changelist")
    response = admin_client.get(changelist, {"model_name": "kling-v1", "mode": "pro"})
    assert response.status_code == 200
    [price] = response.context["cl"].result_list

    response = admin_client.post(
        changelist + "?model_name=kling-v1&mode=pro",
        {
            "form-TOTAL_FORMS": 1,
            "form-INITIAL_FORMS": 1,
            "form-0-id": price.pk,
            "form-0-quota": 400,
            "_save": "Save",
        },
    )

    assert response.status_code == 302
    price.refresh_from_db()
    assert price.quota == 400
    assert admin_client.get(url("billing_price_change", price.pk)).status_code == 200
    assert admin_client.get(url("billing_price_add")).status_code == 200


def test_ledger_is_read_only(admin_client, account):
    entry = LedgerEntry.objects.get()
    change = url("billing_ledgerentry_change", entry.pk)

    assert admin_client.get(url("billing_ledgerentry_changelist")).status_code == 200
    response = admin_client.get(change)
    assert response.status_code == 200
    assert not response.context["has_change_permission"]
    assert admin_client.get(url("billing_ledgerentry_add")).status_code == 403
    assert admin_client.get(url("billing_ledgerentry_delete", entry.pk)).status_code == 403
    admin_client.post(change, {"amount": 1, "balance_after": 1, "kind": "topup"})
    entry.refresh_from_db()
    assert entry.amount == 1000


def test_ledger_search_and_filter(admin_client, account):
    LedgerEntry.objects.create(
        account=account, kind=LedgerEntry.Kind.CHARGE, amount=-100, balance_after=900,
        charged_task_id=4242,
    )  # fmt: skip
    make_consumer("bob", quota=5)
    changelist = url("billing_ledgerentry_changelist")

    def results(**params):
        response = admin_client.get(changelist, params)
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    assert {e.account.user.username for e in results(q="alice")} == {"alice"}
    assert [e.charged_task_id for e in results(q="4242")] == [4242]
    assert [e.kind for e in results(kind__exact="charge")] == ["charge"]
    assert len(results()) == 3


# --- tasks and callbacks -----------------------------------------------------------


def test_task_change_page_shows_pretty_json_and_callbacks(admin_client, account, channel):
    task = make_task(
        account,
        channel,
        task_id="kling-123",
        status=TaskStatus.SUCCEED,
        request_body={"prompt": "<b>cat</b>", "image": "x" * 50_000},
        upstream_payload={"task_id": "kling-123", "task_status": "succeed"},
        video_url="https://cdn.example/video.mp4",
    )
    CallbackEvent.objects.create(
        task=task,
        body=json.dumps({"task_id": "kling-123", "task_status": "succeed"}),
        outcome=CallbackEvent.Outcome.APPLIED,
        detail="task is succeed",
        remote_addr="10.0.0.7",
    )

    response = admin_client.get(url("videos_videotask_change", task.pk))

    assert response.status_code == 200
    text = response.text
    assert "<pre" in text
    assert "{\n  &quot;prompt&quot;: &quot;&lt;b&gt;cat&lt;/b&gt;&quot;," in text
    assert "<b>cat</b>" not in text
    assert "x" * 50_000 not in text
    assert "(50000 characters)" in text
    assert "  &quot;task_status&quot;: &quot;succeed&quot;\n}" in text
    assert 'href="https://cdn.example/video.mp4"' in text
    assert "10.0.0.7" in text
    assert "task is succeed" in text
    assert SECRET_KEY not in text


def test_task_video_link_only_for_http_urls(admin_client, account):
    task = make_task(account, video_url="javascript:alert(1)")

    response = admin_client.get(url("videos_videotask_change", task.pk))

    assert 'href="javascript:' not in response.text


def test_tasks_cannot_be_added_or_edited(admin_client, account):
    task = make_task(account)

    assert admin_client.get(url("videos_videotask_add")).status_code == 403
    response = admin_client.get(url("videos_videotask_change", task.pk))
    assert not response.context["has_change_permission"]
    admin_client.post(url("videos_videotask_change", task.pk), {"status": "failed"})
    task.refresh_from_db()
    assert task.status == TaskStatus.PENDING


def test_task_changelist_filters_and_search(admin_client, account, channel, prices):
    done = make_task(account, channel, task_id="kling-done", status=TaskStatus.SUCCEED)
    running = make_task(
        make_consumer("bob"),
        task_id="kling-running",
        status=TaskStatus.PROCESSING,
        consumer_external_task_id="bob-1",
        model_name="kling-v1-6",
        action="image2video",
        video_id="vid-9",
    )
    changelist = url("videos_videotask_changelist")

    def ids(**params):
        response = admin_client.get(changelist, params)
        assert response.status_code == 200
        return [t.pk for t in response.context["cl"].result_list]

    assert ids() == [running.pk, done.pk]
    assert ids(status__exact="succeed") == [done.pk]
    assert ids(q="kling-running") == [running.pk]
    assert ids(q="kling-run") == []  # exact only
    assert ids(q=str(done.pk)) == [done.pk]
    assert ids(q="bob-1") == [running.pk]
    assert ids(q="vid-9") == [running.pk]
    assert ids(channel__id__exact=channel.pk) == [done.pk]
    assert ids(owner__id__exact=account.pk) == [done.pk]
    assert ids(model_name="kling-v1-6") == [running.pk]
    assert ids(action="image2video") == [running.pk]
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    assert ids(created_at__gte=str(today)) == [running.pk, done.pk]
    assert ids(created_at__lt=str(today)) == []


def test_task_changelist_query_count_does_not_grow_with_rows(admin_client, account, channel):
    changelist = url("videos_videotask_changelist")

    def query_count():
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(changelist).status_code == 200
        return len(queries)

    make_task(account, channel)
    few = query_count()
    for number in range(10):
        make_task(make_consumer(f"user{number}"), channel)
    assert query_count() == few


def test_callback_event_admin_is_read_only(admin_client, account):
    task = make_task(account, task_id="kling-7")
    event = CallbackEvent.objects.create(
        task=task,
        body='{"task_status": "failed"}',
        outcome=CallbackEvent.Outcome.APPLIED,
        token="callback-token-secret",
    )
    CallbackEvent.objects.create(body="not json <x>", outcome=CallbackEvent.Outcome.INVALID)
    changelist = url("videos_callbackevent_changelist")

    response = admin_client.get(changelist)
    assert response.status_code == 200
    assert url("videos_videotask_change", task.pk) in response.text
    response = admin_client.get(changelist, {"outcome__exact": "invalid"})
    assert [e.outcome for e in response.context["cl"].result_list] == ["invalid"]

    response = admin_client.get(url("videos_callbackevent_change", event.pk))
    assert response.status_code == 200
    assert "{\n  &quot;task_status&quot;: &quot;failed&quot;\n}" in response.text
    assert "callback-token-secret" not in response.text
    invalid = CallbackEvent.objects.get(outcome="invalid")
    response = admin_client.get(url("videos_callbackevent_change", invalid.pk))
    assert "not json &lt;x&gt;" in response.text
    assert admin_client.get(url("videos_callbackevent_add")).status_code == 403
    assert admin_client.get(url("videos_callbackevent_delete", event.pk)).status_code == 403


def test_forwarded_callbacks_are_shown_read_only(admin_client, account):
    task = make_task(account, task_id="kling-8", consumer_callback_url="https://consumer.test/hook")
    delivery = CallbackDelivery.objects.create(
        task=task,
        url=task.consumer_callback_url,
        body='{"task_status": "succeed"}',
        task_status="succeed",
        state=CallbackDelivery.State.GAVE_UP,
        attempts=12,
        last_status_code=503,
        last_error="Service Unavailable",
        next_attempt_at=timezone.now(),
    )

    response = admin_client.get(url("videos_videotask_change", task.pk))
    assert "Service Unavailable" in response.text
    response = admin_client.get(url("videos_callbackdelivery_changelist"), {"state": "gave_up"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [delivery]
    response = admin_client.get(url("videos_callbackdelivery_change", delivery.pk))
    assert response.status_code == 200
    assert "{\n  &quot;task_status&quot;: &quot;succeed&quot;\n}" in response.text
    assert admin_client.get(url("videos_callbackdelivery_add")).status_code == 403


def test_every_admin_index_page_loads(admin_client):
    assert admin_client.get(url("index")).text.count("Kling Relay") >= 1
    for app_label in ("channels_app", "billing", "videos"):
        assert admin_client.get(url("app_list", app_label)).status_code == 200
    for name in (
        "channels_app_channel",
        "billing_account",
        "billing_apikey",
        "billing_price",
        "billing_ledgerentry",
        "videos_videotask",
        "videos_callbackevent",
        "videos_callbackdelivery",
    ):
        assert admin_client.get(url(f"{name}_changelist")).status_code == 200, name
    assert admin_client.get(url("billing_account_add")).status_code == 200
    assert admin_client.get(url("channels_app_channel_add")).status_code == 200


@pytest.mark.mariadb
def test_unfiltered_task_list_counts_from_table_statistics_when_large(db, monkeypatch):
    from videos import paginators

    monkeypatch.setattr(paginators, "ESTIMATE_ABOVE", -1)
    page = paginators.EstimatedCountPaginator(VideoTask.objects.order_by("-id"), 100)
    with CaptureQueriesContext(connection) as queries:
        assert page.count >= 0
    assert "information_schema.TABLES" in queries[0]["sql"]
    filtered = paginators.EstimatedCountPaginator(VideoTask.objects.filter(status="failed"), 100)
    with CaptureQueriesContext(connection) as queries:
        assert filtered.count == 0
    assert "COUNT(*)" in queries[0]["sql"]
