#!/usr/bin/env python3
"""Overhead of the pika integration per published and per consumed message,
against the uninstrumented library, in one run.

    python benchmarks/messaging/run.py [--messages 2000] [--rounds 5] [--amqp HOST:PORT]

Without ``--amqp`` it starts a private RabbitMQ broker (Debian's
``rabbitmq-server``, as the tests do) and stops it at the end. Each round
publishes ``--messages`` messages on a blocking channel (no publisher
confirms: the client's own cost dominates), then consumes them with a
``basic_consume`` callback, in three modes in alternating order: pika
unpatched; unpatched but every message carrying a ``traceparent`` header
(what the broker and pika's encoder pay for the context pulsetrace adds);
patched (spans recorded, every trace kept, no exporter). Prints the median
microseconds per message of each and the difference to the bare library.

Figures, not a test: exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def broker(addr: str | None) -> Iterator[tuple[str, int]]:
    if addr:
        host, _, port = addr.rpartition(":")
        yield host, int(port)
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import rabbitmq

    with rabbitmq() as server:
        yield server.host, server.port


#: What pulsetrace adds to each message, for the ``headers`` mode.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def one_round(pika, channel, n: int, headers: bool = False) -> tuple[float, float]:
    """(publish, consume) seconds per message."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue)
    body = b"x" * 256
    props = pika.BasicProperties(headers={"traceparent": TRACEPARENT}) if headers else None
    t0 = time.perf_counter()
    for _ in range(n):
        channel.basic_publish("", queue, body, props)
    t1 = time.perf_counter()
    done = [0]

    def on_message(ch, method, properties, body):
        done[0] += 1
        if done[0] == n:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    t2 = time.perf_counter()
    channel.start_consuming()
    t3 = time.perf_counter()
    channel.queue_delete(queue)
    return (t1 - t0) / n, (t3 - t2) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--amqp", help="HOST:PORT of a running broker")
    args = parser.parse_args()

    import pika

    import pulsetrace
    from pulsetrace.contrib import pika as hook

    pulsetrace.configure(sample_rate=1.0)
    modes = ("bare", "headers", "pulsetrace")
    results: dict[str, dict[str, list[float]]] = {
        mode: {"publish": [], "consume": []} for mode in modes
    }
    with broker(args.amqp) as (host, port):
        conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
        channel = conn.channel()
        one_round(pika, channel, min(args.messages, 200))  # warm up
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for mode in order:
                (hook.patch if mode == "pulsetrace" else hook.unpatch)()
                publish, consume = one_round(pika, channel, args.messages, mode == "headers")
                results[mode]["publish"].append(publish)
                results[mode]["consume"].append(consume)
        hook.unpatch()
        conn.close()
    print(f"pika {pika.__version__}, {args.messages} messages x {args.rounds} rounds, medians")
    for op in ("publish", "consume"):
        bare, headers, traced = (statistics.median(results[m][op]) * 1e6 for m in modes)
        print(
            f"{op:8s} bare {bare:7.1f} us/msg  bare+traceparent header {headers:7.1f}  "
            f"pulsetrace {traced:7.1f}  +{traced - bare:6.1f} us ({traced / bare:.2f}x)"
        )


if __name__ == "__main__":
    main()
