"""A pub/sub subscriber as its own process, for tests/test_pubsub.py (flow control).

``python -m tests.pubsub_apps DATA_DIR TOPIC TOTAL [SLOW_MS]``: subscribes to ``TOPIC``
(events ``[seq, padding]``, seq from 0), prints ``ready``, then takes events (sleeping
``SLOW_MS`` ms per batch: a slow consumer) until one with seq >= ``TOTAL`` arrives (the
test's end marker, part of the same sequence: a loss shows as a gap only once a later
message of its topic arrives); then prints one JSON line: ``received`` (events with seq <
``TOTAL``), ``last`` (the end marker's seq), ``lost`` (the subscription's count of events
the node dropped for it), ``gaps`` (events missing from the seq, as the subscriber itself
sees them), ``disorder`` (a seq that went backwards) and ``dropped`` (malformed).
"""

from __future__ import annotations

import json
import sys
import time

import prismatic as p


def main() -> None:
    data_dir, topic, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    slow = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    received = gaps = disorder = expected = 0
    with p.Subscription(data_dir, topic) as sub:
        print("ready", flush=True)
        while expected <= total:
            batch = sub.next_batch()
            for event in batch:
                seq = event.payload[0]
                if seq > expected:
                    gaps += seq - expected
                elif seq < expected:
                    disorder += 1
                expected = seq + 1
                received += seq < total
            if slow:
                time.sleep(slow)
        print(json.dumps({"received": received, "last": expected - 1, "lost": sub.lost,
                          "gaps": gaps, "disorder": disorder, "dropped": sub.dropped}),
              flush=True)


if __name__ == "__main__":
    main()
