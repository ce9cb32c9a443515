"""The demo's load generator: a steady mix of the service's requests, a few
per second, so the live page has moving data from the first seconds.

Mostly reads and message sends, some contact sign-ups (a few with a bad
phone number: 400), unknown ids (404), campaign batches (slow: three
provider calls each) and read receipts. The provider stub adds its own slow
answers and timeouts (504).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any, Callable, Optional

TEMPLATES = ["welcome", "order_shipped", "appointment_reminder", "promo_image"]


class LoadGenerator:
    """``threads`` threads, each sending about ``rate / threads`` requests a
    second to ``http://127.0.0.1:<port>`` until :meth:`stop`."""

    def __init__(self, port: int, rate: float = 6.0, threads: int = 2) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.interval = threads / rate
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent: list[int] = []  # ids of messages sent, for read receipts
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"demo-load-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def call(self, method: str, path: str, payload: Optional[dict[str, Any]] = None) -> Any:
        """One request; its JSON answer (None for a non-JSON one). The
        status is counted, errors included."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                status, raw = reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except OSError:
            status, raw = 0, b""  # the service is restarting or stopping
        with self._lock:
            self.statuses[status] += 1
        try:
            return json.loads(raw)
        except ValueError:
            return None

    # -- the mix ---------------------------------------------------------------------

    def _send_message(self, rng: random.Random) -> None:
        if rng.random() < 0.06:  # a client bug: no template
            self.call("POST", "/messages", {"contact_id": rng.randint(1, 60)})
            return
        answer = self.call(
            "POST",
            "/messages",
            {"contact_id": rng.randint(1, 60), "template": rng.choice(TEMPLATES)},
        )
        if isinstance(answer, dict) and answer.get("status") == "delivered":
            with self._lock:
                self._sent.append(int(answer["id"]))
                del self._sent[:-200]

    def _sign_up(self, rng: random.Random) -> None:
        phone = f"+55119{rng.randrange(10**7, 10**8)}"
        if rng.random() < 0.2:
            phone = phone[1:8]  # not a phone number: 400
        self.call(
            "POST",
            "/contacts",
            {
                "name": "New Contact",
                "phone": phone,
                "company_id": rng.choice(["comp_acme", "comp_globex"]),
            },
        )

    def _read_receipt(self, rng: random.Random) -> None:
        with self._lock:
            message = rng.choice(self._sent) if self._sent else None
        if message is None:
            self.call("GET", "/templates")
        else:
            self.call("POST", "/webhooks/read", {"message_id": message})

    def _mix(self, rng: random.Random) -> list[tuple[float, Callable[[], None]]]:
        def company() -> str:
            return rng.choice(["comp_acme", "comp_globex"])

        return [
            (30, lambda: self._send_message(rng)),
            (18, lambda: self.call("GET", f"/contacts?company={company()}&limit=20")),
            (10, lambda: self.call("GET", f"/contacts/{rng.randint(1, 70)}")),  # some 404
            (8, lambda: self._sign_up(rng)),
            (8, lambda: self.call("GET", "/campaigns")),
            (8, lambda: self.call("GET", f"/campaigns/{rng.randint(1, 3)}/stats")),
            (5, lambda: self.call("GET", f"/messages/{rng.randint(1, 200)}")),
            (5, lambda: self._read_receipt(rng)),
            (4, lambda: self.call("GET", "/templates")),
            (4, lambda: self.call("POST", f"/campaigns/{rng.randint(1, 3)}/send")),
        ]

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        mix = self._mix(rng)
        weights = [w for w, _ in mix]
        actions = [a for _, a in mix]
        next_at = time.monotonic()
        while not self._stop.is_set():
            rng.choices(actions, weights)[0]()
            next_at = max(next_at + self.interval, time.monotonic() - self.interval)
            self._stop.wait(max(0.0, next_at - time.monotonic()))
