import stepflows

from . import payments


def reserve_stock(order: dict) -> dict:
    return {"order_id": order["order_id"], "items": len(order["items"])}


def charge_card(order: dict) -> dict:
    return payments.charge(order["order_id"], order["amount"])


def send_receipt(order: dict, payment: dict) -> str:
    return f"receipt for order {order['order_id']}: charge {payment['charge_id']}"


@stepflows.workflow(id="fulfil-order", trigger="shop/order.paid")
def fulfil_order(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    order = ctx.event.data
    reservation = step.run("reserve-stock", reserve_stock, order)
    payment = step.run("charge-card", charge_card, order)  # retried on its own
    receipt = step.run("send-receipt", send_receipt, order, payment)
    return {"reserved": reservation["items"], "charge_id": payment["charge_id"], "receipt": receipt}


@stepflows.workflow(id="remind-unpaid", trigger="shop/order.created")
def remind_unpaid(ctx: stepflows.Context, step: stepflows.StepSync) -> dict:
    order_id = ctx.event.data["order_id"]
    paid = step.wait_for_event(
        "payment", event="shop/order.paid", match="data.order_id", timeout=86400
    )
    if paid is not None:
        return {"reminded": False}
    step.sleep("grace-period", 3600)
    return {"reminded": True, "order_id": order_id}
