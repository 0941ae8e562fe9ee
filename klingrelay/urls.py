from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views import defaults

from videos.views import CallbackView, VideoCollectionView, VideoTaskView

from .errors import kling_error_response
from .middleware import is_kling_path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("kling/v1/videos/<str:segment>", VideoCollectionView.as_view(), name="kling-videos"),
    path(
        "kling/v1/videos/<str:action>/<str:task_id>",
        VideoTaskView.as_view(),
        name="kling-video-task",
    ),
    path("kling/internal/callback", CallbackView.as_view(), name="kling-callback"),
]


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_kling_path(request):
        return kling_error_response(request, 404, 1202, f"Path {request.path} is not supported")
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_kling_path(request):
        return kling_error_response(request, 400, 1200, "Bad request")
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_kling_path(request):
        return kling_error_response(request, 500, 5000, "Internal server error")
    return defaults.server_error(request)


handler404 = "klingrelay.urls.not_found"
handler400 = "klingrelay.urls.bad_request"
handler500 = "klingrelay.urls.server_error"
