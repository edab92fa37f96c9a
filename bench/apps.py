from django.apps import AppConfig


class BenchConfig(AppConfig):
    """Registers the bench workflows (``workflows.py``); no models."""

    name = "bench"
    label = "stepflows_bench"
    verbose_name = "Stepflows benchmark"
