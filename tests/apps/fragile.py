"""An app whose module fails to import while the file named by $BANANAS_TEST_BREAK exists.

The master imports it first (with the file absent); children that re-import it
(preload_app = false) fail once the test creates the file: a child that cannot
boot.
"""

from __future__ import annotations

import os

from tests.apps.recorder import app

if os.path.exists(os.environ.get("BANANAS_TEST_BREAK", "/nonexistent")):
    raise RuntimeError("this deploy is broken")

__all__ = ["app"]
