from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .forms import ConsumerCreationForm, IssueApiKeyForm, TopUpForm
from .models import Account, ApiKey, LedgerEntry, Price
from .services import top_up


def issued_key_message(api_key: ApiKey, raw_key: str) -> str:
    return format_html(
        "New API key for {} (copy it now, it will not be shown again): <code>{}</code><br>"
        "For Kling SDKs: access key <code>{}</code>, secret key <code>{}</code><br>"
        "Webhook secret (verifies forwarded callbacks): <code>{}</code>",
        api_key.account,
        raw_key,
        api_key.access_key,
        api_key.secret_key,
        api_key.webhook_secret,
    )


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ["prefix", "name", "is_active", "expires_at", "created_at", "last_used_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # keys are issued with "Issue API key", which shows the key once


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    add_form = ConsumerCreationForm
    add_fieldsets = [(None, {"fields": ["username", "initial_quota"]})]
    fields = ["user", "quota", "reserved", "available", "created_at", "updated_at"]
    readonly_fields = fields
    list_display = ["username", "quota", "reserved", "available", "active_keys", "created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username"]
    inlines = [ApiKeyInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Account]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                available_quota=F("quota") - F("reserved"),
                active_key_count=Count("api_keys", filter=Q(api_keys__is_active=True)),
            )
        )

    def get_form(self, request: HttpRequest, obj=None, **kwargs) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj=None):
        return self.add_fieldsets if obj is None else super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return () if obj is None else self.readonly_fields

    def get_inlines(self, request: HttpRequest, obj=None):
        return self.inlines if obj else []

    def save_model(self, request: HttpRequest, obj: Account, form, change: bool) -> None:
        if change:
            return  # nothing on the change form is editable; quota moves only via top_up
        obj.user = get_user_model().objects.create_user(username=form.cleaned_data["username"])
        obj.save()
        if amount := form.cleaned_data["initial_quota"]:
            top_up(
                account=obj, amount=amount, note=f"Initial quota, by {request.user.get_username()}"
            )

    @admin.display(description="Username", ordering="user__username")
    def username(self, account: Account) -> str:
        return account.user.get_username()

    @admin.display(description="Available", ordering="available_quota")
    def available(self, account: Account) -> int:
        return account.available

    @admin.display(description="Active keys", ordering="active_key_count")
    def active_keys(self, account: Account) -> int:
        return account.active_key_count

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/top-up/", view(self.top_up_view), name="billing_account_top_up"),
            path(
                "<path:object_id>/issue-key/",
                view(self.issue_key_view),
                name="billing_account_issue_key",
            ),
            *super().get_urls(),
        ]

    def top_up_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        account = self._account_to_change(request, object_id)
        form = TopUpForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            amount, note = form.cleaned_data["amount"], form.cleaned_data["note"]
            try:
                top_up(
                    account=account, amount=amount, note=note or f"By {request.user.get_username()}"
                )
            except ValueError as error:
                form.add_error("amount", str(error))
            else:
                self.log_change(request, account, f"Topped up {amount:+d}")
                self.message_user(request, f"Quota of {account} changed by {amount:+d}.")
                return redirect(self._change_url(account))
        return self._render_form(request, account, form, "Top up quota", "Top up")

    def issue_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        account = self._account_to_change(request, object_id)
        form = IssueApiKeyForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            api_key, raw_key = ApiKey.issue(account, name=form.cleaned_data["name"])
            self.log_change(request, account, f"Issued API key {api_key.prefix}…")
            self.message_user(request, issued_key_message(api_key, raw_key), messages.SUCCESS)
            return redirect(self._change_url(account))
        return self._render_form(request, account, form, "Issue API key", "Issue key")

    def _account_to_change(self, request: HttpRequest, object_id: str) -> Account:
        account = self.get_object(request, unquote(object_id))
        if account is None:
            raise Http404("No such consumer.")
        if not self.has_change_permission(request, account):
            raise PermissionDenied
        return account

    def _change_url(self, account: Account) -> str:
        return reverse("admin:billing_account_change", args=[account.pk])

    def _render_form(self, request, account, form, title, submit_label) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": account,
            "title": f"{title}: {account}",
            "form": form,
            "submit_label": submit_label,
        }
        return TemplateResponse(request, "admin/billing/account/object_form.html", context)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "account", "is_active", "expires_at", "last_used_at"]
    list_filter = ["is_active"]
    list_select_related = ["account__user"]
    search_fields = ["prefix", "name", "account__user__username", "=access_key"]
    fields = [
        "account",
        "prefix",
        "name",
        "is_active",
        "expires_at",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    readonly_fields = ["account", "prefix", "is_active", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # issued from the consumer's page, the only place the full key is shown

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        api_keys = list(queryset.filter(is_active=True))
        for api_key in api_keys:
            api_key.revoke()
            self.log_change(request, api_key, "Revoked")
        self.message_user(request, f"Revoked {len(api_keys)} API key(s).", messages.SUCCESS)


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model_name", "mode", "duration", "action", "sound", "quota", "updated_at"]
    list_display_links = ["model_name"]
    list_editable = ["quota"]
    list_filter = ["model_name", "mode", "action"]
    search_fields = ["model_name"]
    ordering = ["model_name", "mode", "duration", "action", "sound"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "account",
        "kind",
        "amount",
        "balance_after",
        "charged_task_id",
        "api_key",
        "note",
    ]
    list_filter = ["kind", "created_at"]
    list_select_related = ["account__user", "api_key"]
    search_fields = ["account__user__username", "charged_task_id"]
    search_help_text = "Exact username or task id."
    show_full_result_count = False

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        # Exact matches only: both are indexed, unlike the LIKE lookups the admin would use.
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(account__user__username=term)
        if term.isdigit():
            match |= Q(charged_task_id=int(term))
        return queryset.filter(match), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
