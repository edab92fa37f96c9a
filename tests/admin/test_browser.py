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
    page = browser.new_page(viewport={"width": 1400, "height": 900})
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


def test_a_named_staff_user_retries_then_forks_from_the_middle_step(
    celery_worker: Any, live_server: Any, tmp_path: Path
) -> None:
    """The audit trail and fork from a step, as staff see them (issue 14)."""
    from django.contrib.auth.models import Permission

    from stepflows.models import Intervention
    from tests.testapp.marks import count

    alice = User.objects.create_user("alice", password="alice-e2e", is_staff=True)
    alice.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="stepflows",
            codename__in=["view_run", "view_event", "view_step", "retry_run", "fork_run"],
        )
    )
    key = uuid.uuid4().hex[:12]
    gate = tmp_path / "gate"
    [failed_event] = stepflows.send("test/resumable", data={"key": key, "gate": str(gate)})
    [three_event] = stepflows.send("test/three-steps", data={"key": key})
    [failed] = runs_for([failed_event])
    [three] = runs_for([three_event])
    assert wait_for_run(failed.pk).status == RunStatus.FAILED
    assert wait_for_run(three.pk).status == RunStatus.COMPLETED
    # No ORM calls from here on until the browser is closed (see the test above).
    with chromium() as browser:
        forked_url = audit_and_fork_in_browser(browser, live_server.url, failed, three, gate)
    [retry] = Intervention.objects.filter(run=failed)
    assert (retry.action, retry.by, retry.user_id) == ("retry", "alice", alice.pk)
    [fork] = Intervention.objects.filter(run=three)
    assert (fork.action, fork.by, fork.detail) == ("fork", "alice", {"from_step": "b"})
    assert forked_url.endswith(reverse("admin:stepflows_run_change", args=[fork.new_run_id]))
    # The first step's code ran once (the fork kept its output), the rest twice.
    assert [count(f"{key}-{s}") for s in "abc"] == [1, 2, 2]


def audit_and_fork_in_browser(browser: Any, base: str, failed: Run, three: Run, gate: Path) -> str:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-e2e")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")

    # Retry the failed run with a reason.
    failed_url = reverse("admin:stepflows_run_change", args=[failed.pk])
    page.goto(f"{base}{failed_url}")
    gate.write_text("open")
    page.click("#sf-retry_runs")
    page.fill("#sf-reason", "the gate is open now")
    page.click("#sf-confirm")
    page.wait_for_url(f"**{failed_url}")
    deadline = time.monotonic() + 120
    while page.inner_text("#sf-run-status").strip() != "completed":
        assert time.monotonic() < deadline, "the retried run did not complete in the page"
        time.sleep(0.5)
        page.reload()
    trail = page.inner_text("#sf-audit")
    assert "alice" in trail and "retry" in trail and "the gate is open now" in trail
    if page.locator(".intervention-marker").count():
        assert page.locator(".intervention-marker").count() >= 1
    save(page, "run-page-audit-trail.png")

    # The same entry in Django's admin history of the run, and in "Recent actions".
    page.click("#sf-run-history")
    assert "Retried (the gate is open now)" in page.inner_text("#content")
    page.goto(f"{base}/admin/")
    assert str(failed.pk) in page.inner_text("#recent-actions-module")

    # Fork the three-step run from its middle step.
    page.goto(f"{base}{reverse('admin:stepflows_run_change', args=[three.pk])}")
    page.click("#sf-fork_runs")
    page.select_option("#sf-from-step", "b")
    page.fill("#sf-reason", "redo b and c")
    page.click("#sf-confirm")
    page.wait_for_selector("#sf-run-forked-from")
    forked_url = page.url
    assert forked_url != f"{base}{reverse('admin:stepflows_run_change', args=[three.pk])}"
    assert "at step b" in page.inner_text("#sf-run-forked-from")
    deadline = time.monotonic() + 120
    while page.inner_text("#sf-run-status").strip() != "completed":
        assert time.monotonic() < deadline, "the forked run did not complete in the page"
        time.sleep(0.5)
        page.reload()
    assert page.locator("#sf-steps tr.sf-step").count() == 3
    save(page, "run-page-forked.png")
    return forked_url


def test_the_workflows_page_sends_a_test_event_and_shows_its_run(
    celery_worker: Any, live_server: Any
) -> None:
    """The workflows page: a schema error on the form, then a test event that starts a
    run; the runs list with every column fits 1,400 px (issue 14)."""
    from django.contrib.auth.models import Permission

    from tests.admin.conftest import build_run

    sender = User.objects.create_user("sender", password="sender-e2e", is_staff=True)
    sender.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="stepflows",
            codename__in=["view_run", "view_event", "view_step", "send_test_event"],
        )
    )
    # Rows that make the runs list wide: a fan-out child, a long error, a long name.
    parent = build_run(workflow="a-workflow-with-a-rather-long-name", event_name="shop/order.paid")
    build_run(workflow="fan-child", source_run=parent, event_name="shop/order.line")
    build_run(
        status="failed",
        error={"type": "StepError", "message": "card declined: " + "no funds " * 40},
    )
    # No ORM calls from here on until the browser is closed (see the first test).
    with chromium() as browser:
        run_url = send_test_event_in_browser(browser, live_server.url)
    [run] = Run.objects.filter(event__name="test/wp-order.created")
    assert run.workflow_id == "wp-order"
    assert run_url.endswith(reverse("admin:stepflows_run_change", args=[run.pk]))
    assert wait_for_run(run.pk).status == RunStatus.COMPLETED


def save_view(page: Any, name: str) -> None:
    """A screenshot of the window only (the workflows page lists every test workflow)."""
    for folder in screenshot_dirs():
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name))


def send_test_event_in_browser(browser: Any, base: str) -> str:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "sender")
    page.fill("#id_password", "sender-e2e")
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")

    # From the index to the workflows page.
    page.click("#content-main a:text-is('Workflows')")
    page.wait_for_selector("#sf-workflows")
    row = page.locator('tr.sf-workflow[data-workflow="wp-order"]')
    assert "test/wp-order.created" in row.locator(".sf-wf-triggers").inner_text()
    assert "order_id" in row.locator(".sf-wf-schema").inner_text()

    # Data the schema rejects: the error on the form, nothing sent.
    row.locator("summary").click()
    form = row.locator("form.sf-send-form")
    form.locator("select").select_option("test/wp-order.created")
    form.locator("textarea").fill('{"order_id": 0}')
    form.locator("button[type=submit]").click()
    page.wait_for_selector(".sf-send-errors")
    page.locator('tr.sf-workflow[data-workflow="wp-order"]').scroll_into_view_if_needed()
    errors = page.locator('tr.sf-workflow[data-workflow="wp-order"] .sf-send-errors').inner_text()
    assert "does not match the schema" in errors and "email" in errors
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    save_view(page, "workflows-page-error.png")

    # Valid data: sent, and the page lists the run it started.
    form = page.locator('tr.sf-workflow[data-workflow="wp-order"] form.sf-send-form')
    form.locator("textarea").fill('{"order_id": 42, "email": "test@example.com"}')
    form.locator("button[type=submit]").click()
    page.wait_for_selector("#sf-sent a.sf-sent-run")
    assert "It started 1 run" in page.inner_text("#sf-sent")
    save_view(page, "workflows-page.png")
    page.click("#sf-sent a.sf-sent-run")
    page.wait_for_selector("#sf-run-status")
    run_url = page.url
    deadline = time.monotonic() + 120
    while page.inner_text("#sf-run-status").strip() != "completed":
        assert time.monotonic() < deadline, "the test event's run did not complete in the page"
        time.sleep(0.5)
        page.reload()

    # The runs list with every column fits the window, with no sideways scrolling.
    page.goto(f"{base}{reverse('admin:stepflows_run_changelist')}")
    page.wait_for_selector("#result_list")
    for column in ("parent_link", "started", "steps_display", "attempts_display", "error_summary"):
        assert page.locator(f"#result_list th.column-{column}").is_visible(), column
    widths = page.evaluate(
        """() => {
            const list = document.querySelector('#changelist .results');
            const table = document.querySelector('#result_list');
            return {
                list: list.clientWidth, table: table.scrollWidth,
                right: table.getBoundingClientRect().right, window: window.innerWidth,
                page: document.documentElement.scrollWidth,
            };
        }"""
    )
    assert widths["table"] <= widths["list"], widths
    assert widths["right"] <= widths["window"] and widths["page"] <= widths["window"], widths
    assert page.locator("#result_list td.field-parent_link a").count() == 1
    save(page, "runs-list.png")
    page.click("text=Top-level runs only")
    page.wait_for_url("**top_level=yes**")
    assert page.locator("#result_list td.field-parent_link a").count() == 0
    return run_url


def test_a_running_step_shows_on_the_run_page_without_a_reload(
    celery_worker: Any, live_server: Any
) -> None:
    """A run with a 5 s step: its page shows the step running, then completed, on its
    own (the page refreshes itself while the run is active, and stops after) (issue 14)."""
    import threading

    from django.db import connection

    from stepflows.models import Step

    User.objects.create_superuser("watcher", "watcher@example.com", "watcher-e2e")
    key = uuid.uuid4().hex[:12]
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "watcher")
        page.fill("#id_password", "watcher-e2e")
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")

        # Send the event from another thread: no ORM calls in this one while the
        # browser's event loop runs (see the first test).
        started: list[Any] = []

        def send() -> None:
            try:
                [event_id] = stepflows.send("test/live-steps", data={"key": key, "seconds": 5})
                started.extend(runs_for([event_id]))
            finally:
                connection.close()

        sender = threading.Thread(target=send)
        sender.start()
        sender.join()
        [run] = started
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{live_server.url}{reverse('admin:stepflows_run_change', args=[run.pk])}")
        watch_the_long_step(page)
        assert errors == [], errors
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.COMPLETED, run.error
    assert Step.objects.get(run=run, step_id="long").attempt_count == 1


def watch_the_long_step(page: Any) -> None:
    from playwright.sync_api import expect

    long = page.locator('#sf-steps tr.sf-step[data-step="long"]')
    # Shown running, with its worker, by the page's own refresh.
    expect(long).to_contain_text("running", timeout=60_000)
    assert page.locator("#sf-live").count() == 1
    save(page, "run-page-running.png")
    expect(page.locator("#sf-run-status")).to_have_text("completed", timeout=60_000)
    expect(long).to_contain_text("completed")
    # The run ended: the page no longer refreshes itself.
    assert page.locator("#sf-live").count() == 0
