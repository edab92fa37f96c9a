import os

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class StepflowsConfig(AppConfig):
    name = "stepflows"
    verbose_name = "Stepflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .worker_connections import install

        # Celery's task signals: connections kept across tasks as across requests.
        install()

        if os.environ.get("STEPFLOWS_TEST_DATABASE_NAME") or os.environ.get("STEPFLOWS_TEST_QUEUE"):
            # A worker started by stepflows.testing for a test: the test database, its queue.
            from .testing.live import apply_worker_overrides

            apply_worker_overrides()

        # Like admin.py: every installed app's workflows.py registers its workflows.
        autodiscover_modules("workflows")
