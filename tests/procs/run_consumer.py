"""Run a standalone consumer of tests.apps.recorder in this process.

usage: python -m tests.procs.run_consumer THREADS [PRIORITIES] [JOB_TYPES]
Environment: BANANAS_REDIS_URL, BANANAS_NAMESPACE, OWNER_TTL (seconds).
Prints "ready" once consuming.
"""

from __future__ import annotations

import os
import signal
import sys

from bananas_prefork.core.consumer import Consumer
from tests.apps.recorder import app


def main() -> None:
    threads = int(sys.argv[1])
    priorities = sys.argv[2].split(",") if len(sys.argv) > 2 else ["high", "normal", "low"]
    job_types = sys.argv[3].split(",") if len(sys.argv) > 3 else ["*"]
    app.configure(owner_ttl=float(os.environ.get("OWNER_TTL", "30")))
    consumer = Consumer(app, priorities=priorities, job_types=job_types, threads=threads)
    signal.signal(signal.SIGTERM, lambda *_: consumer.request_stop())
    consumer.start()
    print("ready", consumer.owner, flush=True)
    consumer.run()


if __name__ == "__main__":
    main()
