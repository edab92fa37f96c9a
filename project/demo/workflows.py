"""Demo workflows: sequential steps, parallel steps, chunked parallel work."""

from __future__ import annotations

import functools

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
