"""How a child's life ends, as the child says it and as the master reads it."""

from __future__ import annotations

import signal

# A child leaves with one of these (os._exit); the master decides by them.
EXIT_OK = 0  # asked to stop, and stopped
EXIT_CRASH = 1  # an error escaped the child's own handling
EXIT_BOOT_ERROR = 3  # could not import the app or start consuming: back off
EXIT_ORPHANED = 4  # the master died


def describe_exit(code: int) -> str:
    """``os.waitstatus_to_exitcode`` as a person reads it."""
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name
    hint = " (perhaps out of memory)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"
