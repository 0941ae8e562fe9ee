"""The admin site: Django's, plus the operators' dashboard under /admin/dashboard/."""

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse


class RelayAdminSite(admin.AdminSite):
    index_template = "admin/relay_index.html"  # Django's index with a link to the dashboard

    def get_urls(self) -> list[URLPattern | URLResolver]:
        # Imported when the URLs are built, not with this module: the site is loaded by the
        # first admin.py that touches admin.site, while the others are still importing, and
        # the dashboard reads from every app.
        from videos import dashboard_views as views

        return [
            path("dashboard/", self.admin_view(views.dashboard), name="dashboard"),
            path(
                "dashboard/consumers/<int:account_id>/",
                self.admin_view(views.consumer_usage),
                name="dashboard_consumer",
            ),
            path(
                "dashboard/consumers/<int:account_id>/tasks.csv",
                self.admin_view(views.consumer_tasks_csv),
                name="dashboard_consumer_csv",
            ),
            *super().get_urls(),
        ]

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
        from videos.dashboard_views import can_view_dashboard

        if can_view_dashboard(request):
            extra_context = {
                **(extra_context or {}),
                "dashboard_url": reverse("admin:dashboard", current_app=self.name),
            }
        return super().index(request, extra_context)
