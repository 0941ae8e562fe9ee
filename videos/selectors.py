"""Reads of a consumer's tasks, answered from the relay's own records."""

from django.http import HttpRequest, HttpResponse, QueryDict

from billing.models import ApiKey
from klingrelay.errors import InvalidParameter

from .models import VideoTask
from .wire import consumer_task_object, task_envelope, task_object_from_row

MAX_PAGE_SIZE = 500
MAX_PAGE_NUM = 1_000_000


def _page_param(params: QueryDict, name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    # int() would also take "1_0", "+5" or non-ASCII digits; Kling wants plain numbers.
    if not raw.isascii() or not raw.isdigit():
        raise InvalidParameter(f"{name} must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidParameter(f"{name} must be between {low} and {high}")
    return value


def list_tasks(
    request: HttpRequest, *, api_key: ApiKey, action: str, params: QueryDict
) -> HttpResponse:
    """Kling's list endpoint: the consumer's tasks of one action, newest first."""
    page_num = _page_param(params, "pageNum", 1, 1, MAX_PAGE_NUM)
    page_size = _page_param(params, "pageSize", 30, 1, MAX_PAGE_SIZE)
    offset = (page_num - 1) * page_size
    tasks = (
        VideoTask.objects.filter(owner_id=api_key.account_id, action=action)
        .exclude(task_id=None)
        .order_by("-id")[offset : offset + page_size]
    )
    return task_envelope(
        request, [consumer_task_object(task, task_object_from_row(task)) for task in tasks]
    )
