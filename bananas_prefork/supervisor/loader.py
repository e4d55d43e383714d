"""Importing the application: the one place that does it, for ``check``, ``start``,
``enqueue --config``, a code deploy and a child that does not preload.

The master imports the app once before forking (children share it
copy-on-write). A code deploy must not be defeated by that preload: before
forking new children, the master forgets the application's own modules
(everything imported for the app that is not in the standard library or
site-packages) and imports them again. If the new code fails to import, the
old modules are put back and the running code stays.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import sysconfig
from pathlib import Path

from ..core.app import App
from ..core.config import Deployment, error_at

_baseline: set[str] = set()
_library_roots = tuple(
    str(Path(path).resolve())
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (path := sysconfig.get_paths().get(key))
)


def import_app(deployment: Deployment) -> App:
    """Import the deployment's App; any failure is a ConfigError on the ``app`` key."""
    spec = deployment.app
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # any failure to import is the user's to fix
        raise error_at(deployment, "app", f"cannot import {module_name!r}: "
                                          f"{type(exc).__name__}: {exc}") from None
    target: object = module
    for part in (attribute or "app").split("."):
        target = getattr(target, part, None)
    if not isinstance(target, App):
        raise error_at(deployment, "app", f"{spec!r} is not an App (found "
                                          f"{type(target).__name__}); point it at the App "
                                          "instance")
    return target


def first_import(deployment: Deployment) -> App:
    """Import the app in the master, remembering which modules were there before it."""
    _baseline.update(sys.modules)
    app = import_app(deployment)
    freeze_for_fork()
    return app


def freeze_for_fork() -> None:
    """Move everything imported so far out of the garbage collector's sight.

    A collection in a child would otherwise touch every preloaded object and
    copy the pages it shares with the master (about 12 MB for a modest app);
    frozen objects are never scanned, so they stay shared.
    """
    gc.collect()
    gc.freeze()


def _is_application_module(name: str) -> bool:
    module = sys.modules.get(name)
    filename = getattr(module, "__file__", None)
    if name in _baseline or not filename:
        return False
    return not str(Path(filename).resolve()).startswith(_library_roots)


def reimport_app(deployment: Deployment) -> App:
    """Forget the application's modules and import the app again (fresh code).

    Raises ConfigError (with the old modules restored) if the new code fails.
    """
    stale = [name for name in list(sys.modules) if _is_application_module(name)]
    saved = {name: sys.modules.pop(name) for name in stale}
    importlib.invalidate_caches()
    try:
        app = import_app(deployment)
        freeze_for_fork()
        return app
    except BaseException:
        for name in list(sys.modules):
            if _is_application_module(name):
                del sys.modules[name]
        sys.modules.update(saved)
        raise
