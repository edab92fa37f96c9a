"""Peers the bench compares with: DBOS, and a plain Celery app."""
