"""Plain functions the demo workflows run as steps (no network: all local)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel, Field


class Charge(BaseModel):
    """The data of a stripe/charge.created event, as record-revenue expects it."""

    email: str
    amount: int = Field(ge=0, description="in cents")
    currency: str = "eur"


class Revenue(BaseModel):
    email: str
    amount: Decimal
    currency: str
    booked_at: datetime


def send_email(address: str, subject: str) -> str:
    time.sleep(0.2)
    return "msg-" + hashlib.sha1(f"{address}:{subject}".encode()).hexdigest()[:12]


def update_user(charge: dict) -> dict:
    time.sleep(0.2)
    return {"email": charge["email"], "lifetime_value": charge.get("amount", 0)}


def split_text_into_chunks(text: str, words_per_chunk: int = 40) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def summarize_chunk(chunk: str) -> str:
    """A stand-in summarizer: the chunk's first sentence, at most 12 words."""
    words = chunk.split(".")[0].split()
    return " ".join(words[:12])


def summarize_summaries(summaries: list[str]) -> str:
    return " / ".join(s for s in summaries if s)


def reserve_stock(order: dict) -> dict:
    return {"reserved": [item["sku"] for item in order.get("items", [])]}


def charge_card(order: dict) -> dict:
    total = sum(item.get("price", 0) * item.get("qty", 1) for item in order.get("items", []))
    return {"charged": total, "currency": "EUR"}


def ship(order: dict, reservation: dict) -> str:
    return f"shipment-{order['order_id']}-{len(reservation['reserved'])}"


def send_invoice(order: dict) -> str:
    return f"invoice-{order['order_id']}"


def cancel_order(order: dict) -> dict:
    return {"order_id": order["order_id"], "cancelled": True, "reason": "not paid in time"}


def book_revenue(charge: Charge) -> Revenue:
    return Revenue(
        email=charge.email,
        amount=(Decimal(charge.amount) / 100).quantize(Decimal("0.01")),
        currency=charge.currency.upper(),
        booked_at=datetime.now(UTC),
    )


#: How long push_to_crm takes: long enough to see a customer's other updates wait.
CRM_SECONDS = 6


def push_to_crm(customer: dict) -> dict:
    """A slow call to a CRM that takes one update per customer at a time."""
    time.sleep(CRM_SECONDS)
    return {"customer_id": customer["customer_id"], "synced": customer.get("change", "")}


def rebuild_search_index(catalog: str, last_change: dict) -> dict:
    return {"catalog": catalog, "rebuilt_after": last_change.get("sku", "")}
