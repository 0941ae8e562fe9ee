from django import forms
from django.db import models

from .models import Channel


def https_url_fields(db_field: models.Field, **kwargs) -> forms.Field | None:
    """A host typed without a scheme means https (Django 6's default, chosen now)."""
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value, so no secret is ever sent back to the browser
    (neither the stored keys nor keys just typed into a form that failed validation)."""

    def format_value(self, value):
        return None


class ChannelAdminForm(forms.ModelForm):
    # Not required at field level even on add: Channel.clean already reports a missing key,
    # and a second "This field is required." would say the same thing twice.
    key = forms.CharField(label="Keys", required=False, widget=WriteOnlyTextarea(attrs={"rows": 3}))

    class Meta:
        model = Channel
        fields = ["name", "type", "key", "base_url", "model_names", "priority", "weight"]
        formfield_callback = https_url_fields

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        key_field = self.fields["key"]
        if self.instance.pk:
            self.initial["key"] = ""  # so an empty field does not count as a change
            key_field.help_text = (
                f"Leave empty to keep the current keys ({self.instance.masked_key}). "
                "To replace them, enter all keys, one ACCESS_KEY|SECRET_KEY per line."
            )
        else:
            key_field.widget.attrs["required"] = True
            key_field.help_text = Channel._meta.get_field("key").help_text

    def clean_key(self) -> str:
        key = self.cleaned_data["key"]
        if not key.strip() and self.instance.pk:
            return self.instance.key
        return key
