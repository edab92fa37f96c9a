from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class StepflowsConfig(AppConfig):
    name = "stepflows"
    verbose_name = "Stepflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks

        # Like admin.py: every installed app's workflows.py registers its workflows.
        autodiscover_modules("workflows")
