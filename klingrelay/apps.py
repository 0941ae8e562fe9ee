from django.contrib.admin.apps import AdminConfig


class RelayAdminConfig(AdminConfig):
    """Django's admin with the relay's own site (the dashboard pages), in INSTALLED_APPS
    instead of "django.contrib.admin": `admin.site` and `@admin.register` stay as they are."""

    default_site = "klingrelay.admin_site.RelayAdminSite"
