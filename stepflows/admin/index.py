"""The admin index as stepflows arranges it: a Workflows entry, and no celery-results noise.

The workflows page belongs to no model, so the index learns of it here, through the
site's ``get_app_list`` (the index, the app page and the navigation sidebar all call
it). django-celery-results, when the project installs it, registers its task, group
and chord rows with the admin; stepflows keeps its state in its own rows, so those
are hidden unless the project asks for them:
``STEPFLOWS["ADMIN_SHOW_CELERY_RESULTS"] = True``, or a ModelAdmin of its own
registered for them (which shows it registered them on purpose). The app is known
here by its label only, never imported: stepflows does not need it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from ..conf import get_settings

CELERY_RESULTS = "django_celery_results"
#: The URL name of the workflows page (stepflows.admin.workflows).
WORKFLOWS_URL = "admin:stepflows_workflows"


def install(site: AdminSite) -> None:
    """Have ``site``'s app list show the Workflows entry and hide celery results."""
    if getattr(site, "_stepflows_index", False):
        return
    original = site.get_app_list

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[Any]:
        return arrange(site, request, original(request, app_label))

    # The default site is an instance shared by the whole project: wrap, don't subclass.
    setattr(site, "get_app_list", get_app_list)  # noqa: B010
    setattr(site, "_stepflows_index", True)  # noqa: B010


def arrange(site: AdminSite, request: HttpRequest, app_list: list[Any]) -> list[Any]:
    if not get_settings().ADMIN_SHOW_CELERY_RESULTS:
        app_list = [app for app in map(_without_celery_results(site), app_list) if app["models"]]
    for app in app_list:
        if app["app_label"] == "stepflows" and request.user.has_perm("stepflows.view_run"):
            entry = _workflows_entry(site)
            if entry is not None:
                app["models"].append(entry)
                app["models"].sort(key=lambda m: str(m["name"]))
    return app_list


def _without_celery_results(site: AdminSite) -> Any:
    def keep(app: dict[str, Any]) -> dict[str, Any]:
        if app["app_label"] != CELERY_RESULTS:
            return app
        app["models"] = [m for m in app["models"] if _on_purpose(site, m.get("model"))]
        return app

    return keep


def _on_purpose(site: AdminSite, model: Any) -> bool:
    """Whether the project registered this celery-results model with its own ModelAdmin."""
    model_admin = site._registry.get(model)
    return model_admin is not None and not type(model_admin).__module__.startswith(CELERY_RESULTS)


def _workflows_entry(site: AdminSite) -> dict[str, Any] | None:
    try:
        url = reverse(WORKFLOWS_URL, current_app=site.name)
    except NoReverseMatch:
        return None
    return {
        "model": None,
        "name": "Workflows",
        "object_name": "Workflow",
        "perms": {"add": False, "change": False, "delete": False, "view": True},
        "admin_url": url,
        "add_url": None,
        "view_only": True,
    }
