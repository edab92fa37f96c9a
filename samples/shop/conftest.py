"""A fake of the payment provider's API, for the tests that run steps on a real worker.

A worker process cannot see the test's stubs: the worker's settings point
PAYMENTS_API_URL at this fake instead (the environment is read when the
worker starts, after this fixture set it).
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FakePayments(BaseHTTPRequestHandler):
    charges: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakePayments.charges.append(body)
        answer = json.dumps({"charge_id": f"ch_{body['order_id']}", "paid": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session", autouse=True)
def fake_payments_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePayments)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    os.environ["PAYMENTS_API_URL"] = f"http://127.0.0.1:{server.server_port}/v1/charges"
    yield FakePayments.charges
    server.shutdown()
