from django.apps import AppConfig


class TwoFactorConfig(AppConfig):
    name = "twofactor"
    verbose_name = "Two-factor authentication"
    default_auto_field = "django.db.models.BigAutoField"
