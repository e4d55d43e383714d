"""A sizeable application for the preload benchmark (master.py, section d).

Same tasks as supervisedtasks.py, plus what a real application carries at
import time: a set of heavier standard-library modules, a bytes blob of
``BENCH_BALLAST_MB`` MB (default 32; every page written, so resident) and a
dict of ``BENCH_TABLE_ROWS`` rows (default 200,000; small tuples, floats and
strings: about 55 MB of Python objects). With ``BENCH_GC_FREEZE=1`` the
module ends with ``gc.freeze()``, what a prefork master can do right before it
forks, so that the children's collections leave the preloaded objects alone.

    app = "heavytasks:app"       # with PYTHONPATH=bench/
"""

from __future__ import annotations

import asyncio  # noqa: F401  (imported for its weight)
import decimal  # noqa: F401
import email.parser  # noqa: F401
import gc
import http.client  # noqa: F401
import json  # noqa: F401
import os
import sqlite3  # noqa: F401
import unittest  # noqa: F401
import xml.etree.ElementTree  # noqa: F401

from supervisedtasks import app

BALLAST_MB = int(os.environ.get("BENCH_BALLAST_MB", "32"))
TABLE_ROWS = int(os.environ.get("BENCH_TABLE_ROWS", "200000"))

BLOB = bytes(range(256)) * (BALLAST_MB * 4096)  # written while built: every page resident
TABLE = {f"row-{i}": (i, float(i), f"value {i}") for i in range(TABLE_ROWS)}

if os.environ.get("BENCH_GC_FREEZE") == "1":
    gc.freeze()  # everything allocated so far moves to the permanent generation

__all__ = ["BLOB", "TABLE", "app"]
