from django import forms
from django.contrib.auth import get_user_model

from .models import Account, ApiKey

User = get_user_model()


class ConsumerCreationForm(forms.ModelForm):
    """One step for a new consumer: a login-less user, its account and its first quota."""

    username = User._meta.get_field(User.USERNAME_FIELD).formfield()
    initial_quota = forms.IntegerField(
        min_value=0, initial=0, help_text="Recorded in the ledger as the first top-up."
    )

    class Meta:
        model = Account
        fields: list[str] = []

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
            raise forms.ValidationError("A user with this username already exists.")
        return username


class TopUpForm(forms.Form):
    amount = forms.IntegerField(help_text="Quota units to add; negative to correct a balance.")
    note = forms.CharField(max_length=200, required=False)

    def clean_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("Enter a non-zero amount.")
        return amount


class IssueApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=ApiKey._meta.get_field("name").max_length,
        required=False,
        help_text="Optional, to tell this consumer's keys apart.",
    )
