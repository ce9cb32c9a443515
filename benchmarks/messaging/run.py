#!/usr/bin/env python3
"""Overhead of the pika integration per published and per consumed message,
against the uninstrumented library, in one run.

    python benchmarks/messaging/run.py [--messages 2000] [--rounds 5] [--amqp HOST:PORT]

Without ``--amqp`` it starts a private RabbitMQ broker (Debian's
``rabbitmq-server``, as the tests do) and stops it at the end. Each round
publishes ``--messages`` messages per mode on a blocking channel (no
publisher confirms: the client's own cost dominates), in batches of 100
alternating between the modes, then consumes each mode's queue with a
``basic_consume`` callback. The three modes: pika
unpatched; unpatched but every message carrying a ``traceparent`` header
(what the broker and pika's encoder pay for the context pulsetrace adds);
patched (spans recorded, every trace kept, no exporter). Prints the median
microseconds per message of each (publish: over batches; consume: over
rounds) and the difference to the bare library: wall-clock time, and the
process's CPU time (every thread's, pulsetrace's core worker included),
which a busy shared machine disturbs less than the wall clock.

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


BATCH = 100


def publish_batches(
    pika, channel, queues: dict[str, str], n: int, hook
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Publish ``n`` messages to each mode's queue, in batches of
    :data:`BATCH` that alternate between the modes (a load spike on a
    shared machine then hits every mode alike). Seconds per message, per
    batch: wall clock, and the process's CPU time."""
    body = b"x" * 256
    headers = pika.BasicProperties(headers={"traceparent": TRACEPARENT})
    out: dict[str, list[float]] = {mode: [] for mode in queues}
    cpu: dict[str, list[float]] = {mode: [] for mode in queues}
    for b in range(n // BATCH):
        modes = list(queues) if b % 2 == 0 else list(queues)[::-1]
        for mode in modes:
            (hook.patch if mode == "pulsetrace" else hook.unpatch)()
            props = headers if mode == "headers" else None
            queue = queues[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(BATCH):
                channel.basic_publish("", queue, body, props)
            out[mode].append((time.perf_counter() - t0) / BATCH)
            cpu[mode].append((time.process_time() - c0) / BATCH)
    return out, cpu


def consume(channel, queue: str, n: int) -> tuple[float, float]:
    """Seconds per message to consume ``n`` messages with a callback (wall, CPU)."""
    done = [0]

    def on_message(ch, method, properties, body):
        done[0] += 1
        if done[0] == n:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message, auto_ack=True)
    t0, c0 = time.perf_counter(), time.process_time()
    channel.start_consuming()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


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
        mode: {"publish": [], "consume": [], "publish cpu": [], "consume cpu": []} for mode in modes
    }
    with broker(args.amqp) as (host, port):
        conn = pika.BlockingConnection(pika.ConnectionParameters(host=host, port=port))
        channel = conn.channel()
        for r in range(args.rounds + 1):  # the first round warms up
            queues = {mode: f"bench-{mode}-{uuid.uuid4().hex[:8]}" for mode in modes}
            for queue in queues.values():
                channel.queue_declare(queue)
            published, published_cpu = publish_batches(pika, channel, queues, args.messages, hook)
            order = modes if r % 2 == 0 else modes[::-1]
            consumed = {}
            for mode in order:
                (hook.patch if mode == "pulsetrace" else hook.unpatch)()
                consumed[mode] = consume(channel, queues[mode], args.messages)
            for queue in queues.values():
                channel.queue_delete(queue)
            if r == 0:
                continue
            for mode in modes:
                results[mode]["publish"].extend(published[mode])
                results[mode]["publish cpu"].extend(published_cpu[mode])
                results[mode]["consume"].append(consumed[mode][0])
                results[mode]["consume cpu"].append(consumed[mode][1])
        hook.unpatch()
        conn.close()
    print(f"pika {pika.__version__}, {args.messages} messages x {args.rounds} rounds, medians")
    for op in ("publish", "consume", "publish cpu", "consume cpu"):
        bare, headers, traced = (statistics.median(results[m][op]) * 1e6 for m in modes)
        print(
            f"{op:11s} bare {bare:7.1f} us/msg  bare+traceparent header {headers:7.1f}  "
            f"pulsetrace {traced:7.1f}  +{traced - bare:6.1f} us ({traced / bare:.2f}x)"
        )


if __name__ == "__main__":
    main()
