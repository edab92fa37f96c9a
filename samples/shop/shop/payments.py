"""The payment provider's HTTP API: an external service, stubbed or faked in tests."""

import json
import urllib.request

from django.conf import settings


def charge(order_id: int, amount: int) -> dict:
    """Charge the order's card; the provider's answer, e.g. {"charge_id": "ch_1", "paid": True}."""
    request = urllib.request.Request(
        settings.PAYMENTS_API_URL,
        data=json.dumps({"order_id": order_id, "amount": amount}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)
