"""The dashboard as a WSGI application: routes, page handlers, templates.

Every page is rendered on the server by Jinja2 with autoescaping on, so every
text a job supplies (ids, task names, errors, tracebacks, results) reaches the
browser as text. A page's script asks for the page again every few seconds
with ``X-Bananas-Partial: 1`` and gets only its live part back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ... import __version__
from ...core.broker import Broker
from ...core.config import AlertsConfig, ConfigError, Deployment
from ...core.durations import format_age
from ...core.settings import declared
from .pages import Reader, clip, page_number
from .web import (
    ACTIONS_COOKIE,
    Guard,
    HTTPError,
    Request,
    Response,
    StartResponse,
    WSGIEnviron,
    redirect,
    respond,
)

log = logging.getLogger(__name__)

Handler = Callable[[Request], Response]
UNLOCK_FOR = 8 * 3600  # seconds an unlocked browser may act
NAV = (("/", "Overview"), ("/queues", "Queues"), ("/scheduler", "Scheduler"),
       ("/dead", "Dead letters"))
NOTICES = {
    "retried": "{n} job(s) sent back to their queues.",
    "deleted": "{n} dead job(s) deleted.",
    "unlocked": "Actions unlocked in this browser.",
    "locked": "Actions locked.",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml", ".LICENSE": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class Options:
    """How a dashboard is exposed (from ``dashboard_*`` settings or command options)."""

    prefix: str = ""
    auth: str | None = None  # "user:password" for every page
    token: str | None = None  # enables actions, which need it
    show_args: bool = False
    refresh: float = 2.0  # seconds between a page's updates

    @classmethod
    def of(cls, deployment: Deployment | None,
           environ: Mapping[str, str] | None = None) -> Options:
        """The deployment's ``dashboard_*`` settings; what it leaves unset (all of them
        without a file) from their environment variables, so secrets can stay out of
        the file. ConfigError names a bad variable."""
        environ = os.environ if environ is None else environ
        deployment = deployment or Deployment(app="-")
        values: dict[str, Any] = {}
        for setting in declared(Deployment):
            env = setting.metadata.get("env")
            if not setting.name.startswith("dashboard_") or not isinstance(env, str) or \
                    not environ.get(env) or getattr(deployment, setting.name) != setting.default:
                continue
            try:
                values[setting.name] = setting.metadata["parse"](environ[env])
            except ValueError as exc:
                raise ConfigError("environment", env, str(exc)) from None
        deployment = dataclasses.replace(deployment, **values)
        return cls(prefix=deployment.dashboard_prefix, auth=deployment.dashboard_auth,
                   token=deployment.dashboard_token, show_args=deployment.dashboard_show_args)


def _timestamp(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + " UTC"


def _static_files() -> dict[str, bytes]:
    """Every file under static/, by its path there (read once: they ship with the code)."""
    root = resources.files(__package__) / "static"
    found: dict[str, bytes] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif any(entry.name.endswith(ext) for ext in STATIC_TYPES):
                found[prefix + entry.name] = entry.read_bytes()

    walk(root, "")
    return found


class Dashboard:
    """The WSGI application: ``Dashboard(broker, options)(environ, start_response)``."""

    def __init__(self, broker: Broker, options: Options = Options(),
                 alerts: AlertsConfig | None = None) -> None:
        self.options = options
        self.reader = Reader(broker, alerts)
        self.guard = Guard(options.auth, options.token)
        self.namespace = broker.keys.namespace
        self.static = _static_files()
        self.templates = Environment(
            loader=PackageLoader(__package__, "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
            auto_reload=False)  # they ship with the code
        self.templates.filters.update(age=format_age, ts=_timestamp)
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/"): self.overview,
            ("GET", "/queues"): self.queues,
            ("GET", "/scheduler"): self.scheduler,
            ("GET", "/dead"): self.dead,
            ("GET", "/job"): self.job,
            ("GET", "/api/status"): self.api_status,
            ("GET", "/api/history"): self.api_history,
            ("POST", "/dead/retry"): self.retry,
            ("POST", "/dead/delete"): self.delete,
            ("POST", "/unlock"): self.unlock,
            ("POST", "/lock"): self.lock,
        }

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ, self.options.prefix)
        try:
            response = self.handle(request)
        except HTTPError as exc:
            response = self.error(request, exc.status, exc.message)
        except redis.RedisError as exc:
            log.warning("dashboard: Redis did not answer: %s", exc)
            response = self.error(request, 503, f"Redis did not answer ({type(exc).__name__}); "
                                                "the page will try again")
        return respond(response, start_response)

    def handle(self, request: Request) -> Response:
        if request.path == "/health":
            self.reader.broker.ping()
            return Response(b"ok\n", content_type="text/plain; charset=utf-8")
        self.guard.check_read(request)
        if request.path.startswith("/static/") and request.method == "GET":
            return self.static_file(request.path[len("/static/"):])
        handler = self.routes.get((request.method, request.path))
        if handler is not None:
            return handler(request)
        if any(path == request.path for _, path in self.routes):
            raise HTTPError(405, "method not allowed")
        raise HTTPError(404, "no such page")

    # -- rendering -----------------------------------------------------------------------

    def render(self, request: Request, name: str, code: int = 200,
               **context: Any) -> Response:
        response = Response(status=code)
        notice = NOTICES.get(request.query.get("notice", ""))
        count = request.query.get("n", "0")
        context.update(
            base=request.base, url=request.url, now=time.time(), namespace=self.namespace,
            nav=NAV, refresh=self.options.refresh, version=__version__,
            csrf=self.guard.csrf_token(request, response),
            actions=self.guard.actions_enabled, unlocked=self.guard.unlocked(request),
            here=request.url(request.path, **request.query),
            notice=notice.format(n=int(count) if count.isdigit() else 0) if notice else None)
        context["partial"] = request.partial  # base.html renders the live block alone
        response.body = self.templates.get_template(name).render(context).encode()
        return response

    def error(self, request: Request, status: int, message: str) -> Response:
        if request.partial or request.path.startswith("/api/"):
            return Response(json.dumps({"error": message}).encode(), status,
                            "application/json")
        if status == 401:
            return Response(message.encode(), status, "text/plain; charset=utf-8")
        return self.render(request, "error.html", status, title=f"{status}", active="",
                           error_code=status, message=message)

    def static_file(self, name: str) -> Response:
        body = self.static.get(name)
        if body is None:
            raise HTTPError(404, "no such file")
        kind = next((t for ext, t in STATIC_TYPES.items() if name.endswith(ext)),
                    "text/plain; charset=utf-8")
        return Response(body, content_type=kind,
                        headers=[("Cache-Control", "public, max-age=86400")])

    @staticmethod
    def json(value: Any) -> Response:
        return Response(json.dumps(value, sort_keys=True).encode(),
                        content_type="application/json")

    # -- pages ---------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        return self.render(request, "overview.html", title="Overview", active="/",
                           **self.reader.overview())

    def queues(self, request: Request) -> Response:
        query = request.query
        sort = "name" if query.get("sort") == "name" else "attention"
        return self.render(request, "queues.html", title="Queues", active="/queues",
                           **self.reader.queues(query.get("q", ""), sort,
                                                page_number(query.get("page"))))

    def scheduler(self, request: Request) -> Response:
        return self.render(request, "scheduler.html", title="Scheduler", active="/scheduler",
                           **self.reader.scheduler())

    def dead(self, request: Request) -> Response:
        query = request.query
        start = query.get("start", "0")
        return self.render(request, "dead.html", title="Dead letters", active="/dead",
                           **self.reader.dead(query.get("task", ""),
                                              page_number(query.get("page")),
                                              int(start) if start.isdigit() else 0))

    def job(self, request: Request) -> Response:
        job_id = request.query.get("id", "")
        info = self.reader.job(job_id)
        if info is None:
            raise HTTPError(404, f"no job {job_id!r} (unknown, or its record expired)")
        data = info.as_dict(with_args=self.options.show_args)
        shown = {key: clip(json.dumps(data[key], indent=2, ensure_ascii=False))
                 for key in ("result", "args", "kwargs") if key in data}
        return self.render(request, "job.html", title=f"Job {info.id}", active="",
                           job=info, shown=shown, show_args=self.options.show_args,
                           error=clip(info.error), traceback=clip(info.traceback))

    def api_status(self, request: Request) -> Response:
        return self.json(self.reader.status())

    def api_history(self, request: Request) -> Response:
        return self.json(self.reader.history(request.query.get("resolution", "second")))

    # -- actions -------------------------------------------------------------------------

    def _back(self, request: Request, notice: str, count: int | None = None) -> Response:
        """Redirect to the page the form was on (only ever a page of this dashboard)."""
        target = request.form().get("next", "")
        if not target.startswith(request.base + "/") or target.startswith("//") or \
                "\\" in target or any(ord(c) < 33 for c in target):
            target = request.url("/dead")
        target = target.split("#", 1)[0]
        query = [part for part in target.partition("?")[2].split("&")
                 if part and not part.startswith(("notice=", "n="))]
        query += [f"notice={notice}"] + ([f"n={count}"] if count is not None else [])
        return redirect(f"{target.partition('?')[0]}?{'&'.join(query)}")

    def _targets(self, request: Request) -> list[str] | None:
        """The job ids a form names; None for every dead job (``all=1``)."""
        if request.form().get("all") == "1":
            return None
        ids = [i for i in request.form_all("id") if i]
        if not ids:
            raise HTTPError(400, "no job given")
        return ids

    def retry(self, request: Request) -> Response:
        self.guard.check_action(request)
        targets = self._targets(request)
        count = self.reader.retry(targets)
        log.info("dashboard: %d dead job(s) retried", count)
        return self._back(request, "retried", count)

    def delete(self, request: Request) -> Response:
        self.guard.check_action(request)
        targets = self._targets(request)
        count = self.reader.delete(targets)
        log.info("dashboard: %d dead job(s) deleted", count)
        return self._back(request, "deleted", count)

    def unlock(self, request: Request) -> Response:
        if not self.guard.actions_enabled:
            raise HTTPError(403, "refused: actions are off on this dashboard")
        response = self._back(request, "unlocked")
        if not self.guard.unlock(request, response, UNLOCK_FOR):
            raise HTTPError(403, "refused: wrong token")
        return response

    def lock(self, request: Request) -> Response:
        self.guard.check_post(request)
        response = self._back(request, "locked")
        response.set_cookie(request, ACTIONS_COOKIE, "", 0)
        return response
