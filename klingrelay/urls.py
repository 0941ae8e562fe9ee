from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from videos.models import VIDEO_ACTIONS
from videos.views import (
    BatchQueryView,
    CallbackView,
    VideoActionView,
    VideoQueryView,
    VideoTaskView,
)

from . import views as operator_views
from .errors import kling_error_response
from .middleware import is_kling_path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The relay's OpenAPI schema and its Swagger UI (static files from drf-spectacular-sidecar).
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # One route per Kling action and the batch query, before the short query form that
    # takes any other segment as a task id.
    *(
        path(
            f"kling/v1/videos/{action}",
            VideoActionView.as_view(video_action=action),
            name=f"kling-{action}",
        )
        for action in VIDEO_ACTIONS
    ),
    path("kling/v1/videos/batch-query", BatchQueryView.as_view(), name="kling-batch-query"),
    path("kling/v1/videos/<str:task_id>", VideoQueryView.as_view(), name="kling-videos"),
    path(
        "kling/v1/videos/<str:action>/<str:task_id>",
        VideoTaskView.as_view(),
        name="kling-video-task",
    ),
    path("kling/internal/callback", CallbackView.as_view(), name="kling-callback"),
    path("metrics", operator_views.metrics, name="metrics"),
    path("healthz", operator_views.healthz, name="healthz"),
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
