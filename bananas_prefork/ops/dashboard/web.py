"""Just enough web for the dashboard: WSGI requests and responses, and the guards
that make it safe to expose (basic auth, CSRF tokens, the actions token).

The standard library's WSGI is all the dashboard needs (a handful of routes,
server-rendered pages, no sessions beyond two cookies), so there is no web
framework to keep up to date; Jinja2 renders and escapes the pages.

Security model: pages only read. State-changing requests are POSTs that
carry a CSRF token (an HMAC of a per-browser random cookie under a
per-process key) and come from the same origin (``Sec-Fetch-Site``); actions
additionally need the operator's token, given once in an unlock form (which
sets an HttpOnly cookie bound to the CSRF cookie) or per request in the
``X-Bananas-Token`` header. Optional HTTP basic auth guards everything but
``/health``. Cookies are ``HttpOnly; SameSite=Strict`` and scoped to the
dashboard's path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

StartResponse = Callable[..., Any]
WSGIEnviron = dict[str, Any]

CSRF_COOKIE = "bananas_csrf"
ACTIONS_COOKIE = "bananas_actions"
TOKEN_HEADER = "HTTP_X_BANANAS_TOKEN"
MAX_FORM = 64 * 1024
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
STATUS_TEXT = {200: "OK", 303: "See Other", 304: "Not Modified", 400: "Bad Request",
               401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               405: "Method Not Allowed", 413: "Content Too Large",
               503: "Service Unavailable"}


class HTTPError(Exception):
    """Stop handling a request and answer with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def set_cookie(self, request: Request, name: str, value: str,
                   max_age: int | None = None) -> None:
        """A cookie for this dashboard's path only; Secure when the browser came by HTTPS."""
        attrs = f"{name}={value}; Path={request.base or '/'}; HttpOnly; SameSite=Strict"
        if request.secure:
            attrs += "; Secure"
        if max_age is not None:
            attrs += f"; Max-Age={max_age}"
        self.headers.append(("Set-Cookie", attrs))


def redirect(location: str) -> Response:
    return Response(status=303, headers=[("Location", location)])


class Request:
    """One WSGI request: method, path below the dashboard's base, query, form, cookies."""

    def __init__(self, environ: WSGIEnviron, prefix: str) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        forwarded = str(environ.get("HTTP_X_FORWARDED_PREFIX", "")).rstrip("/")
        if not prefix and _PREFIX.match(forwarded):
            prefix = forwarded
        path = str(environ.get("PATH_INFO", "")) or "/"
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix):] or "/"  # a proxy that passes the prefix on
        self.path = path
        self.base = str(environ.get("SCRIPT_NAME", "")).rstrip("/") + prefix
        self.query = {k: v[0] for k, v in parse_qs(str(environ.get("QUERY_STRING", "")),
                                                   keep_blank_values=True).items()}
        self.cookies: dict[str, str] = {}
        try:
            jar = SimpleCookie(str(environ.get("HTTP_COOKIE", "")))
            self.cookies = {k: m.value for k, m in jar.items()}
        except CookieError:
            pass
        self._form: dict[str, list[str]] | None = None

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    @property
    def secure(self) -> bool:
        """Reached by HTTPS, directly or through a proxy that says so."""
        return self.environ.get("wsgi.url_scheme") == "https" or \
            self.header("X-Forwarded-Proto").lower() == "https"

    @property
    def partial(self) -> bool:
        """The page's script asks for the live part only (its periodic refresh)."""
        return self.header("X-Bananas-Partial") == "1"

    def form(self) -> dict[str, str]:
        """A posted form's fields (the first value of each)."""
        return {name: values[0] for name, values in self._fields().items()}

    def form_all(self, name: str) -> list[str]:
        return self._fields().get(name, [])

    def _fields(self) -> dict[str, list[str]]:
        if self._form is None:
            try:
                length = int(self.environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > MAX_FORM:
                raise HTTPError(413, "form too large")
            raw = self.environ["wsgi.input"].read(length) if length > 0 else b""
            self._form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return self._form

    def url(self, path: str, **params: object) -> str:
        """A link inside the dashboard (params that are None are left out)."""
        query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
        return f"{self.base}{path}" + (f"?{query}" if query else "")


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Guard:
    """Who may read, and which requests may change state."""

    def __init__(self, auth: str | None, token: str | None) -> None:
        self.auth = auth
        self.token = token
        self.key = secrets.token_bytes(32)  # per process: a restart logs browsers out

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None

    def check_read(self, request: Request) -> None:
        if self.auth is None:
            return
        header = request.header("Authorization")
        if header[:6].lower() == "basic ":
            try:
                given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                given = ""
            if _equal(given, self.auth):
                return
        raise HTTPError(401, "this dashboard needs a user name and password")

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def browser_id(self, request: Request, response: Response) -> str:
        """The per-browser random value the CSRF and unlock cookies are bound to."""
        value = request.cookies.get(CSRF_COOKIE, "")
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            value = secrets.token_hex(32)
            request.cookies[CSRF_COOKIE] = value
            response.set_cookie(request, CSRF_COOKIE, value)
        return value

    def csrf_token(self, request: Request, response: Response) -> str:
        return self._sign("csrf", self.browser_id(request, response))

    def unlocked(self, request: Request) -> bool:
        cookie = request.cookies.get(ACTIONS_COOKIE, "")
        browser = request.cookies.get(CSRF_COOKIE, "")
        return bool(self.token and cookie and browser
                    and _equal(cookie, self._sign("actions", browser)))

    def check_post(self, request: Request) -> None:
        """A form post from a page of this dashboard, not another site."""
        site = request.header("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            raise HTTPError(403, "refused: the request came from another site")
        browser = request.cookies.get(CSRF_COOKIE, "")
        given = request.form().get("csrf", "")
        if not browser or not given or not _equal(given, self._sign("csrf", browser)):
            raise HTTPError(403, "refused: the form has expired or did not come from this "
                                 "dashboard; reload the page and try again")

    def check_action(self, request: Request) -> None:
        """Actions are off unless a token is configured; then they need it."""
        if self.token is None:
            raise HTTPError(403, "refused: actions are off on this dashboard (set "
                                 "dashboard_token to enable them)")
        header = str(request.environ.get(TOKEN_HEADER, ""))
        if header:  # a script: a custom header cannot be sent cross-site without CORS
            if _equal(header, self.token):
                return
            raise HTTPError(403, "refused: wrong token")
        self.check_post(request)
        if self.unlocked(request) or _equal(request.form().get("token", ""), self.token):
            return
        raise HTTPError(403, "refused: this action needs the dashboard's token (unlock "
                             "actions first)")

    def unlock(self, request: Request, response: Response, max_age: int) -> bool:
        self.check_post(request)
        if self.token is None or not _equal(request.form().get("token", ""), self.token):
            return False
        browser = request.cookies[CSRF_COOKIE]
        response.set_cookie(request, ACTIONS_COOKIE, self._sign("actions", browser), max_age)
        return True


def respond(response: Response, start_response: StartResponse) -> Iterable[bytes]:
    own = {name for name, _ in response.headers}
    headers = [("Content-Type", response.content_type),
               ("Content-Length", str(len(response.body))),
               *[(k, v) for k, v in SECURITY_HEADERS if k not in own], *response.headers]
    if response.status == 401:
        headers.append(("WWW-Authenticate", 'Basic realm="bananas-prefork", charset="UTF-8"'))
    start_response(f"{response.status} {STATUS_TEXT.get(response.status, '')}", headers)
    return [response.body]
