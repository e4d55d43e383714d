"""The ``bananas-prefork`` command's front door.

A plain ``start [FILE]`` goes straight to the master (launch.py) without
importing the command-line library: typer, with pydantic and rich, takes
longer to import than the rest of the master, and start-up is on the path of
every restart, deploy and drain of a backlog. Every other command line
(options, ``--help``, other commands) goes to the full CLI (cli.py), whose
``start`` runs the same code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import launch
from .exit_codes import EXIT_INTERRUPTED


def main() -> None:
    """Console-script entry point (also ``python -m bananas_prefork``)."""
    args = sys.argv[1:]
    if args[:1] == ["start"] and len(args) <= 2 and not any(a.startswith("-") for a in args):
        try:
            code = launch.run(Path(args[1]) if len(args) == 2 else None)
        except launch.StartError as exc:
            print(f"bananas-prefork: {exc}", file=sys.stderr)
            code = exc.code
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        sys.exit(code)
    from .cli import main as cli_main

    cli_main()
