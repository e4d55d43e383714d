"""Run one standalone consumer of bench/benchtasks.py in this process.

usage: python bench/run_consumer.py [THREADS]      (default 1)
Environment: as benchtasks.py; PYTHONPATH must reach bananas_prefork.
SIGTERM stops it gracefully (running jobs finish, held jobs are released).
Prints "ready <owner>" once consuming.
"""

from __future__ import annotations

import logging
import signal
import sys

from benchtasks import app

from bananas_prefork.core.consumer import Consumer


def main() -> None:
    # Warnings (failed jobs, redis trouble) go to this process's log file.
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    consumer = Consumer(app, threads=threads)
    signal.signal(signal.SIGTERM, lambda *_: consumer.request_stop())
    consumer.start()
    print("ready", consumer.owner, flush=True)
    consumer.run()


if __name__ == "__main__":
    main()
