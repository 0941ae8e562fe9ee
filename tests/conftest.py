import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import F
from rest_framework.test import APIClient

from billing.models import Account, ApiKey, Price
from billing.services import top_up
from channels_app.models import Channel
from videos.models import VideoTask

KLING_BASE = "https://kling.test"
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789abcdef0123"


def pytest_collection_modifyitems(config, items):
    if connection.vendor == "mysql":
        return
    skip = pytest.mark.skip(reason="needs MariaDB: set DATABASE_URL=mysql://…")
    for item in items:
        if "mariadb" in item.keywords:
            item.add_marker(skip)


def make_consumer(username: str, quota: int = 0) -> Account:
    user = get_user_model().objects.create_user(username=username)
    account = Account.objects.create(user=user)
    if quota:
        top_up(account=account, amount=quota, note="test")
        account.refresh_from_db()
    return account


def make_task(account: Account, channel: Channel | None = None, **fields) -> VideoTask:
    """A task row as the relay would have stored it; fields override the defaults."""
    values = {
        "owner": account,
        "channel": channel,
        "action": "text2video",
        "model_name": "kling-v1",
        "mode": "std",
        "duration": "5",
        "request_body": {"prompt": "p"},
    }
    return VideoTask.objects.create(**values | fields)


def reserved_task(
    account: Account, channel: Channel | None = None, *, reserved: int = 100, **fields
) -> VideoTask:
    """An unfinished task (processing, Kling id K1 unless given) holding its reservation,
    as if the relay had reserved it at submit."""
    Account.objects.filter(pk=account.pk).update(reserved=F("reserved") + reserved)
    defaults = {"status": "processing", "task_id": "K1", "reserved_quota": reserved}
    return make_task(account, channel, **(defaults | fields))


@pytest.fixture
def account(db) -> Account:
    return make_consumer("alice", quota=1000)


@pytest.fixture
def raw_key(account) -> str:
    return ApiKey.issue(account, name="test")[1]


@pytest.fixture
def client_for():
    def build(raw: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return build


@pytest.fixture
def api(raw_key, client_for) -> APIClient:
    return client_for(raw_key)


@pytest.fixture
def channel(db) -> Channel:
    return Channel.objects.create(
        name="primary", key=f"{ACCESS_KEY}|{SECRET_KEY}", base_url=KLING_BASE
    )


@pytest.fixture
def prices(db) -> None:
    for model in ("kling-v1", "kling-v1-6", "kling-video-o1", "kling-v2-master"):
        Price.objects.create(model_name=model, mode="std", duration="5", quota=100)
        Price.objects.create(model_name=model, mode="std", duration="10", quota=200)
        Price.objects.create(model_name=model, mode="pro", duration="5", quota=350)


@pytest.fixture(autouse=True)
def consumer_callback_hosts(settings):
    """`consumer.test` stands for a consumer's public host (nothing resolves here)."""
    settings.CONSUMER_CALLBACK_ALLOWED_HOSTS = ["consumer.test"]


@pytest.fixture(autouse=True)
def fresh_kling_tokens():
    """Kling tokens are cached per process; each test starts without any."""
    from channels_app import credentials

    credentials._token_cache.clear()


@pytest.fixture(autouse=True)
def static_files_without_collectstatic(settings):
    """Pages render and WhiteNoise serves static files from the apps' folders, as under
    runserver: production's manifest storage needs `collectstatic` to have run."""
    settings.STORAGES = settings.STORAGES | {
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    }
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True


@pytest.fixture(autouse=True)
def fresh_process_caches():
    """Per-process caches (API keys, finished answers) start empty in each test."""
    from billing import services as billing_services
    from videos import services as video_services

    billing_services._api_keys.clear()
    video_services._finished_answers.clear()
