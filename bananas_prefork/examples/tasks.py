"""The demo application: five job types shaped like a real workload, sized for a demo.

I/O is simulated with sleeps (nothing touches the network); CPU work is real
pure-Python computation over generated data, so the GIL bites a CPU-bound job
run in a many-threaded pool exactly as it would in production. That contrast
is what the example configurations (``configs/``) are about: many threads for
``send_email`` and ``fetch_data``, one thread per process for
``generate_report`` and ``process_images``.

Every job finishes well under a second. Arguments and results are JSON.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections import Counter
from typing import Any

from bananas_prefork import App, current_job

# No redis_url and no namespace: a master's deployment file (or the environment,
# BANANAS_REDIS_URL / REDIS_URL) decides where the jobs live.
app = App()


class TransientFetchError(ConnectionError):
    """The simulated upstream flaked; the job is retried with backoff."""


def _simulate_io(low: float, high: float) -> None:
    """Stand-in for a network round trip: the thread waits, the GIL is free."""
    time.sleep(random.uniform(low, high))


@app.task(priority="high", timeout=10, max_retries=5)
def send_email(to: str, subject: str = "", body: str = "") -> str:
    """Hand a message to a (pretend) SMTP relay; return the relay's message id.

    High priority: a user is waiting for it (password reset, receipt).
    """
    _simulate_io(0.02, 0.08)
    return f"<{uuid.uuid4().hex}@mail.example.com>"


@app.task(priority="low", timeout=60, max_retries=1)
def generate_report(report_id: int, rows: int = 80_000) -> dict[str, Any]:
    """Summary statistics over generated sales rows: CPU-bound, nobody waits for it.

    Seeded by ``report_id`` so a retried report computes the same figures.
    """
    rng = random.Random(report_id)
    amounts = [rng.lognormvariate(3.0, 1.0) for _ in range(rows)]
    regions = Counter(rng.choice(("emea", "amer", "apac")) for _ in range(rows))
    deciles = statistics.quantiles(amounts, n=10)
    return {
        "report_id": report_id,
        "rows": rows,
        "total": round(sum(amounts), 2),
        "mean": round(statistics.fmean(amounts), 2),
        "median": round(statistics.median(amounts), 2),
        "stdev": round(statistics.stdev(amounts), 2),
        "p90": round(deciles[-1], 2),
        "by_region": dict(regions),
    }


@app.task(timeout=30)
def process_images(image_id: int, width: int = 192, height: int = 192) -> dict[str, Any]:
    """Grayscale, blur and histogram a generated RGB image: CPU-bound, pure Python."""
    rng = random.Random(image_id)
    rgb = rng.randbytes(width * height * 3)
    luma = [(299 * rgb[i] + 587 * rgb[i + 1] + 114 * rgb[i + 2]) // 1000
            for i in range(0, len(rgb), 3)]
    blurred = _box_blur(luma, width, height)
    histogram = [0] * 16
    for value in blurred:
        histogram[value >> 4] += 1
    return {"image_id": image_id, "width": width, "height": height,
            "mean_luma": round(statistics.fmean(blurred), 2), "histogram": histogram}


def _box_blur(pixels: list[int], width: int, height: int) -> list[int]:
    """3x3 mean filter; edge pixels average the neighbours that exist."""
    out = [0] * len(pixels)
    for y in range(height):
        rows = range(max(0, y - 1), min(height, y + 2))
        for x in range(width):
            cols = range(max(0, x - 1), min(width, x + 2))
            total = sum(pixels[r * width + c] for r in rows for c in cols)
            out[y * width + x] = total // (len(rows) * len(cols))
    return out


@app.task(timeout=15, max_retries=5, retry_backoff=0.2, retry_backoff_max=2)
def fetch_data(source: str, page: int = 1) -> dict[str, Any]:
    """Fetch one page from a (pretend) partner API: I/O-bound and a little flaky.

    About one call in twenty fails like a real upstream does now and then; the
    short backoff makes the retries visible in a demo within seconds.
    """
    _simulate_io(0.03, 0.15)
    if random.random() < 0.05:
        raise TransientFetchError(f"{source} page {page}: upstream timed out (simulated)")
    job = current_job()
    return {"source": source, "page": page, "records": random.randint(10, 100),
            "attempt": job.attempt if job else 1}


@app.task(timeout=30)
def process_analytics(events: int = 10_000, buckets: int = 12) -> dict[str, Any]:
    """Load a batch of click events (I/O), then aggregate them (CPU): a mixed job."""
    _simulate_io(0.02, 0.06)
    rng = random.Random()
    actions = ("view", "click", "add_to_cart", "purchase")
    per_bucket: list[Counter[str]] = [Counter() for _ in range(buckets)]
    users: list[set[int]] = [set() for _ in range(buckets)]
    for _ in range(events):
        bucket = rng.randrange(buckets)
        per_bucket[bucket][rng.choices(actions, weights=(70, 20, 7, 3))[0]] += 1
        users[bucket].add(rng.randrange(events // 4 or 1))
    totals = sum(per_bucket, Counter())
    return {"events": events, "actions": dict(totals),
            "unique_users": [len(u) for u in users],
            "conversion": round(totals["purchase"] / max(1, totals["view"]), 4)}
