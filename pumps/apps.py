from django.apps import AppConfig


class PumpsConfig(AppConfig):
    name = "pumps"
    default_auto_field = "django.db.models.BigAutoField"
