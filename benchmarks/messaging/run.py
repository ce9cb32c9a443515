#!/usr/bin/env python3
"""Overhead of the pika integration per published and per consumed message,
against the uninstrumented library, in one run.

    python benchmarks/messaging/run.py [--messages 2000] [--rounds 5] [--amqp HOST:PORT]

Without ``--amqp`` it starts a private RabbitMQ broker (Debian's
``rabbitmq-server``, as the tests do) and stops it at the end. Each round
publishes ``--messages`` messages on a blocking channel (no publisher
confirms: the client's own cost dominates), then consumes them with a
``basic_consume`` callback, once with pika unpatched and once patched
(spans recorded, every trace kept, no exporter), in alternating order.
Prints the median microseconds per message of each and the difference.

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


def one_round(pika, channel, n: int) -> tuple[float, float]:
    """(publish, consume) seconds per message."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue)
    body = b"x" * 256
    t0 = time.perf_counter()
    for _ in range(n):
        channel.basic_publish("", queue, body)
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
    results: dict[str, dict[str, list[float]]] = {
        "bare": {"publish": [], "consume": []},
        "pulsetrace": {"publish": [], "consume": []},
    }
    with broker(args.amqp) as (host, port):
        conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
        channel = conn.channel()
        one_round(pika, channel, min(args.messages, 200))  # warm up
        for r in range(args.rounds):
            order = ["bare", "pulsetrace"] if r % 2 == 0 else ["pulsetrace", "bare"]
            for mode in order:
                (hook.patch if mode == "pulsetrace" else hook.unpatch)()
                publish, consume = one_round(pika, channel, args.messages)
                results[mode]["publish"].append(publish)
                results[mode]["consume"].append(consume)
        hook.unpatch()
        conn.close()
    print(f"pika {pika.__version__}, {args.messages} messages x {args.rounds} rounds, medians")
    for op in ("publish", "consume"):
        bare = statistics.median(results["bare"][op]) * 1e6
        traced = statistics.median(results["pulsetrace"][op]) * 1e6
        print(
            f"{op:8s} bare {bare:8.1f} us/msg   pulsetrace {traced:8.1f} us/msg   "
            f"+{traced - bare:6.1f} us ({traced / bare:.2f}x)"
        )


if __name__ == "__main__":
    main()
