"""End to end in a real headless browser (Debian's chromium driven by Playwright).

Log in, open a failed run, retry it, watch it complete, open compare. The
screenshots of the run page and the compare page go to the session folder, and
to docs/screenshots/ with STEPFLOWS_UPDATE_SCREENSHOTS=1.

Skipped only when /usr/bin/chromium is missing and STEPFLOWS_REQUIRE_BROWSER is
not set; CI sets it, so there a missing browser fails the test.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse

import stepflows
from stepflows.models import Run, RunStatus
from stepflows.testing import runs_for, wait_for_run, wait_for_runs
from tests.settings import SESSION_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.worker,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("STEPFLOWS_REQUIRE_BROWSER"),
        reason=f"no browser: {CHROMIUM} is missing (apt-get install chromium); "
        "set STEPFLOWS_REQUIRE_BROWSER=1 to make this a failure",
    ),
]


def screenshot_dirs() -> list[Path]:
    dirs = [SESSION_DIR / "screenshots"]
    if os.environ.get("STEPFLOWS_UPDATE_SCREENSHOTS"):
        dirs.append(Path(settings.BASE_DIR) / "docs" / "screenshots")
    return dirs


def save(page: Any, name: str) -> None:
    for folder in screenshot_dirs():
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_log_in_retry_a_failed_run_watch_it_complete_and_compare(
    celery_worker: Any, live_server: Any, tmp_path: Path
) -> None:
    User.objects.create_superuser("admin", "admin@example.com", "stepflows-e2e")
    key = uuid.uuid4().hex[:12]
    gate = tmp_path / "gate"
    [failed_event] = stepflows.send("test/resumable", data={"key": key, "gate": str(gate)})
    [variants_event] = stepflows.send(
        "test/admin-summarize", data={"key": key, "chunks": ["alpha", "beta", "gamma", "delta"]}
    )
    [run] = runs_for([failed_event])
    assert wait_for_run(run.pk).status == RunStatus.FAILED
    variants = wait_for_runs(r.pk for r in runs_for([variants_event]))
    fanout = next(r for r in variants if r.workflow_id == "t-admin-fanout")
    parallel = next(r for r in variants if r.workflow_id == "t-admin-parallel")
    wait_for_runs(Run.objects.filter(parent=fanout).values_list("pk", flat=True))
    # Every database call is done by now: Playwright's sync API runs an event loop
    # in this thread, and Django refuses ORM calls while one runs.
    with chromium() as browser:
        check_in_browser(browser, live_server.url, run, parallel, gate)


def check_in_browser(browser: Any, base: str, run: Run, parallel: Run, gate: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)

    # Log in.
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "stepflows-e2e")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")

    # Open the failed run from the list of failed runs.
    page.goto(f"{base}{reverse('admin:stepflows_run_changelist')}?status__exact=failed")
    page.click(f"text={str(run.pk)[:8]}")
    page.wait_for_url(f"**{reverse('admin:stepflows_run_change', args=[run.pk])}")
    assert page.inner_text("#sf-run-status").strip() == "failed"
    assert "gate closed" in page.inner_text("#sf-run-error")
    assert page.locator("svg.stepflows-timeline rect.attempt-bar.failed").count() == 2

    save(page, "run-page-failed.png")

    # Retry it: confirmation page, then back on the run page with a message.
    gate.write_text("open")
    page.click("#sf-retry_runs")
    assert str(run.pk) in page.inner_text("#sf-confirm-rows")
    page.click("#sf-confirm")
    page.wait_for_url(f"**{reverse('admin:stepflows_run_change', args=[run.pk])}")
    assert "Retried 1 failed run(s)" in page.inner_text("ul.messagelist")

    # Watch it complete.
    deadline = time.monotonic() + 120
    while page.inner_text("#sf-run-status").strip() != "completed":
        assert time.monotonic() < deadline, "the retried run did not complete in the page"
        time.sleep(0.5)
        page.reload()
    assert page.locator("svg.stepflows-timeline rect.attempt-bar.ok").count() == 2
    assert "Retry" not in [b.strip() for b in page.locator(".sf-toolbar button").all_inner_texts()]
    save(page, "run-page.png")

    # The parallel variant's page, then compare it with the fan-out variant.
    page.goto(f"{base}{reverse('admin:stepflows_run_change', args=[parallel.pk])}")
    assert page.locator("svg.stepflows-timeline rect.parallel-group").count() == 1
    save(page, "run-page-parallel.png")
    page.click("text=Compare the 2 runs of this event")
    page.wait_for_selector("#sf-compare")
    assert page.locator("tr.sf-compare-row").count() == 6  # 2 variants + 4 fan-out runs
    assert "t-admin-fanout with its fan-out (5 runs)" in page.inner_text("#sf-compare")
    save(page, "compare-page.png")

    # Compare selected runs from the list, through the action.
    page.goto(f"{base}{reverse('admin:stepflows_run_changelist')}")
    for pk in (run.pk, parallel.pk):
        page.check(f'input[name="_selected_action"][value="{pk}"]')
    page.select_option('select[name="action"]', "compare_runs")
    page.click('button[name="index"]')
    page.wait_for_selector("#sf-compare")
    assert page.locator("tr.sf-compare-row").count() == 2
    assert page.locator("svg.stepflows-timeline").count() == 1
