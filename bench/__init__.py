"""The stepflows benchmark: stepflows side by side with raw Celery chords.

``python -m bench`` (or ``make bench``) runs it from a checkout of the
repository; it is not part of the installed package. The bench process and its
worker processes use :mod:`bench.settings`, which wraps the project's settings
and adds this package as an app, so the bench workflows are registered only
while benchmarking.
"""
