"""The stepflows benchmark: stepflows side by side with raw Celery chords.

``python manage.py stepflows bench`` (or ``make bench``) runs it. The bench
process and its worker processes use :mod:`stepflows.bench.settings`, which
wraps the project's settings and adds this package as an app, so the bench
workflows are registered only while benchmarking, never in a user project.
"""
