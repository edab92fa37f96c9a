"""Demo workflows: sequential and parallel steps, chunked work, fan-out, a sleep, a wait,
and flow control (one run per customer at a time, a debounced rebuild)."""

from __future__ import annotations

import functools
from datetime import timedelta

import stepflows

from . import steps


@stepflows.workflow(id="fulfil-order", trigger="shop/order.paid")
def fulfil_order(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Three sequential steps, each stored once and never repeated."""
    order = ctx.event.data
    reservation = step.run("reserve-stock", steps.reserve_stock, order)
    payment = step.run("charge-card", steps.charge_card, order)
    shipment = step.run("ship", steps.ship, order, reservation)
    ctx.logger.info("order %s shipped as %s", order["order_id"], shipment)
    return {"shipment": shipment, "charged": payment["charged"]}


@stepflows.workflow(id="post-payment-flow", trigger="stripe/charge.created")
def post_payment_flow(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Two steps at once on Celery workers, joined by a chord."""
    charge = ctx.event.data
    email_id, updates = step.parallel(
        lambda: step.run("confirmation-email", steps.send_email, charge["email"], "Thanks!"),
        lambda: step.run("update-user", steps.update_user, charge),
    )
    return {"email_id": email_id, "updates": updates}


@stepflows.workflow(id="summarize-text", trigger="app/text.summarize")
async def summarize_text(ctx: stepflows.Context, step: stepflows.Step) -> str:
    """Split a text, summarize every chunk in parallel, then summarize the summaries."""
    chunks = steps.split_text_into_chunks(ctx.event.data["text"])
    summaries = await step.parallel(
        *[functools.partial(step.run, "summarize-chunk", steps.summarize_chunk, c) for c in chunks]
    )
    return await step.run("summarize-summaries", steps.summarize_summaries, list(summaries))


@stepflows.workflow(id="summarize-text-fanout", trigger="app/text.summarize")
def summarize_text_fanout(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """The same job as summarize-text, by fan-out: one event, and one run, per chunk.

    Both workflows listen to ``app/text.summarize``, so one event starts the
    parallel variant and this one side by side. Each chunk's summary is the
    output of its own ``summarize-chunk`` run, a child of this run.
    """
    chunks = steps.split_text_into_chunks(ctx.event.data["text"])
    event_ids = step.send_event(
        "send-chunks",
        [
            stepflows.Event(name="app/chunk.summarize", data={"chunk": chunk, "index": i})
            for i, chunk in enumerate(chunks)
        ],
    )
    return {"chunks": len(chunks), "events": event_ids}


@stepflows.workflow(id="summarize-chunk", trigger="app/chunk.summarize")
def summarize_chunk(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Summarize one chunk sent by summarize-text-fanout."""
    summary = step.run("summarize-chunk", steps.summarize_chunk, ctx.event.data["chunk"])
    return {"index": ctx.event.data["index"], "summary": summary}


@stepflows.workflow(id="record-revenue", trigger="stripe/charge.created", schema=steps.Charge)
def record_revenue(ctx: stepflows.Context, step: stepflows.StepSync) -> steps.Revenue:
    """A second workflow on stripe/charge.created: one event, two runs.

    Its schema validates the charge at send(); inside the run the data is a
    ``Charge`` and the step's ``Revenue`` comes back typed on every replay.
    """
    charge: steps.Charge = ctx.event.data
    return step.run("book-revenue", steps.book_revenue, charge)


@stepflows.workflow(id="signup-reminder", trigger="app/user.signed_up")
def signup_reminder(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Welcome a new user, sleep 10 seconds, then send a reminder.

    The sleep holds no worker: the run waits in the database and a message
    due in 10 seconds wakes it (a sleep over a minute is woken by the
    periodic recovery task instead).
    """
    email = ctx.event.data["email"]
    welcome = step.run("send-welcome", steps.send_email, email, "Welcome!")
    step.sleep("wait-before-reminder", 10)
    reminder = step.run("send-reminder", steps.send_email, email, "Finish setting up")
    return {"welcome": welcome, "reminder": reminder}


@stepflows.workflow(id="await-payment", trigger="shop/order.created")
def await_payment(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Send an invoice, then wait up to 10 minutes for the order's shop/order.paid event.

    The event that resumes this run is the one that starts fulfil-order: a
    shop/order.paid with the same ``order_id``. Without it, the order is
    cancelled when the 10 minutes are up.
    """
    order = ctx.event.data
    invoice = step.run("send-invoice", steps.send_invoice, order)
    paid = step.wait_for_event(
        "wait-for-payment",
        event="shop/order.paid",
        match="data.order_id",
        timeout=timedelta(minutes=10),
    )
    if paid is None:
        step.run("cancel-order", steps.cancel_order, order)
        return {"order_id": order["order_id"], "invoice": invoice, "paid": False}
    return {"order_id": order["order_id"], "invoice": invoice, "paid": True, "payment": paid.id}


@stepflows.workflow(
    id="sync-customer",
    trigger="crm/customer.updated",
    concurrency=stepflows.Concurrency(1, key="data.customer_id"),
)
def sync_customer(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Push a customer's change to the CRM, one run per customer at a time.

    Updates of one customer wait in line, in the database, while its run
    holds the slot (admin shows "waiting: slot for key data.customer_id = 7");
    other customers' runs go on beside it.
    """
    return step.run("push-to-crm", steps.push_to_crm, ctx.event.data)


@stepflows.workflow(
    id="rebuild-search-index",
    trigger="catalog/product.updated",
    debounce=stepflows.Debounce(5, key="data.catalog", timeout=timedelta(minutes=1)),
)
def rebuild_search_index(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    """Rebuild a catalog's search index once a burst of product updates is over.

    A burst of updates starts one run, 5 s after the last one (at most a
    minute after the first), with the last update as its event.
    """
    change = ctx.event.data
    return step.run("rebuild-index", steps.rebuild_search_index, change["catalog"], change)
