"""The provisioning commands operators and scripts use."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from billing.models import Account, LedgerEntry, Price
from billing.services import authenticate_api_key
from channels_app.models import Channel


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_add_channel_creates_and_updates(db):
    output = run(
        "add_channel",
        "--name",
        "sg",
        "--key",
        "AKX1234567|SKsecretvalue",
        "--base-url",
        "https://api-singapore.klingai.com/",
        "--models",
        "kling-v1,kling-v1-6",
        "--priority",
        "5",
        "--weight",
        "3",
    )
    channel = Channel.objects.get(name="sg")
    assert channel.base_url == "https://api-singapore.klingai.com"
    assert channel.model_list == ["kling-v1", "kling-v1-6"]
    assert (channel.priority, channel.weight, channel.type) == (5, 3, 41)
    assert "SKsecretvalue" not in output and "Created channel" in output

    run("add_channel", "--name", "sg", "--key", "AK2|SK2", "--priority", "1")
    channel.refresh_from_db()
    assert channel.priority == 1 and Channel.objects.count() == 1


def test_add_channel_refuses_a_malformed_key(db):
    with pytest.raises(CommandError, match=r"key: Line 1: the secret key \(after '\|'\) is empty"):
        run("add_channel", "--name", "bad", "--key", "AK|")
    assert not Channel.objects.exists()


def test_consumer_topup_and_key(db):
    run("add_consumer", "carol", "--quota", "500")
    account = Account.objects.get(user__username="carol")
    assert account.quota == 500
    assert not account.user.is_staff and not account.user.has_usable_password()

    run("topup", "carol", "250")
    account.refresh_from_db()
    assert account.quota == 750
    assert list(LedgerEntry.objects.order_by("id").values_list("kind", "amount")) == [
        ("topup", 500),
        ("topup", 250),
    ]

    output = run("issue_key", "carol", "--name", "ci")
    raw_key = output.strip().splitlines()[-1]
    assert raw_key.startswith("kr-")
    assert authenticate_api_key(raw_key).account == account


def test_topup_refuses_unknown_consumer_and_overdraft(db):
    with pytest.raises(CommandError, match="No consumer named 'nobody'"):
        run("topup", "nobody", "5")
    run("add_consumer", "dave")
    with pytest.raises(CommandError, match="cannot take 5"):
        run("topup", "dave", "-5")


def test_set_price_creates_and_updates(db):
    run("set_price", "kling-v1", "--mode", "pro", "--duration", "10", "--quota", "70")
    run("set_price", "kling-v1", "--mode", "pro", "--duration", "10", "--quota", "80")
    run(
        "set_price",
        "kling-v1",
        "--mode",
        "pro",
        "--duration",
        "10",
        "--quota",
        "90",
        "--action",
        "image2video",
    )
    assert list(Price.objects.values_list("action", "quota")) == [("", 80), ("image2video", 90)]
