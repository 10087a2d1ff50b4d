from django.apps import AppConfig


class ModelsvcConfig(AppConfig):
    name = "modelsvc"
    default_auto_field = "django.db.models.BigAutoField"
