"""System checks of the Celery settings the guarantees need."""

from __future__ import annotations

import pytest
from celery import current_app

from stepflows.celery_config import RECOMMENDED, django_settings
from stepflows.checks import check_celery, check_connection_reuse, check_prepared_statements


@pytest.fixture
def conf():
    saved = {
        k: current_app.conf.get(k) for k in [*RECOMMENDED, "broker_url", "broker_transport_options"]
    }
    yield current_app.conf
    current_app.conf.update(saved)


def ids(messages):
    return sorted(m.id for m in messages)


def test_the_recommended_config_passes(conf):
    conf.update(RECOMMENDED)
    assert ids(check_celery()) == []


def test_missing_worker_settings_warn(conf):
    conf.update(task_acks_late=False, task_reject_on_worker_lost=None, worker_prefetch_multiplier=4)
    assert ids(check_celery()) == ["stepflows.W010", "stepflows.W011", "stepflows.W012"]


def test_pickle_is_an_error(conf):
    conf.update(accept_content=["json", "pickle"], task_serializer="pickle")
    messages = check_celery()
    assert ids(messages).count("stepflows.E010") == 2
    assert all(m.is_serious() for m in messages if m.id == "stepflows.E010")


def test_redis_without_visibility_timeout_warns(conf):
    conf.update(broker_url="redis://127.0.0.1:6379/0", broker_transport_options={})
    assert "stepflows.W013" in ids(check_celery())
    conf.update(broker_transport_options={"visibility_timeout": 3600})
    assert "stepflows.W013" not in ids(check_celery())


def test_django_settings_form():
    values = django_settings()
    assert values["CELERY_TASK_ACKS_LATE"] is True
    assert values["CELERY_BEAT_SCHEDULE"]["stepflows-recover"]["task"] == "stepflows.recover"
    # Read under this name by Celery's Django fixup, whatever the namespace.
    assert values["CELERY_DB_REUSE_MAX"] == RECOMMENDED["CELERY_DB_REUSE_MAX"]
    assert "CELERY_CELERY_DB_REUSE_MAX" not in values


def test_connections_closed_per_task_warn(conf):
    conf.update(RECOMMENDED)
    assert ids(check_connection_reuse()) == []
    conf.update(CELERY_DB_REUSE_MAX=None)
    [warning] = check_connection_reuse()
    assert warning.id == "stepflows.W015" and not warning.is_serious()
    assert "CELERY_DB_REUSE_MAX is not set" in warning.msg
    assert "CONN_MAX_AGE" in warning.hint


def test_reuse_without_conn_max_age_warns(conf):
    from django.db import connections

    conf.update(RECOMMENDED)
    saved = connections.settings["default"]["CONN_MAX_AGE"]
    connections.settings["default"]["CONN_MAX_AGE"] = 0
    try:
        [warning] = check_connection_reuse()
    finally:
        connections.settings["default"]["CONN_MAX_AGE"] = saved
    assert warning.id == "stepflows.W015"
    assert "['default'] have CONN_MAX_AGE = 0" in warning.msg


def test_a_psycopg_pool_keeps_connections_without_conn_max_age(conf):
    from django.db import connections

    conf.update(RECOMMENDED)
    db = connections.settings["default"]
    saved = db["CONN_MAX_AGE"], db.get("OPTIONS", {})
    db["CONN_MAX_AGE"], db["OPTIONS"] = 0, {**saved[1], "pool": True}
    try:
        assert check_connection_reuse() == []
    finally:
        db["CONN_MAX_AGE"], db["OPTIONS"] = saved


@pytest.fixture
def default_db():
    from django.db import connections

    db = connections.settings["default"]
    saved = db["ENGINE"], db.get("OPTIONS", {})
    yield db
    db["ENGINE"], db["OPTIONS"] = saved


def test_postgresql_without_prepared_statements_warns(default_db):
    default_db["ENGINE"] = "django.db.backends.postgresql"
    default_db["OPTIONS"] = {}
    [warning] = check_prepared_statements()
    assert warning.id == "stepflows.W016" and not warning.is_serious()
    assert "'prepare_threshold': 5" in warning.hint and "PgBouncer" in warning.hint
    default_db["OPTIONS"] = {"prepare_threshold": None}
    assert ids(check_prepared_statements()) == ["stepflows.W016"]
    default_db["OPTIONS"] = {"prepare_threshold": 5}
    assert check_prepared_statements() == []


def test_prepared_statements_are_not_asked_of_sqlite(default_db):
    default_db["ENGINE"] = "django.db.backends.sqlite3"
    default_db["OPTIONS"] = {}
    assert check_prepared_statements() == []
