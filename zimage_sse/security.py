"""Guards in front of every route: body size, event ids, cross-site posts, the access token, rate limits,
and the security headers on every response.

All of it is pure ASGI middleware: Starlette's BaseHTTPMiddleware runs the app in a task and pipes the
response through a memory stream, which delays and can break SSE streams. Each guard answers with the
same shapes as the API (`{"errors": {field: reason}}` for bad input, `{"error": ...}` otherwise) and,
for a browser asking for a page, with the error page instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .answers import A1111_PREFIX, reject, wants_page
from .config import Settings

# Only our own files: no inline script or style (so an injected one cannot run), previews are data: URLs,
# SSE connects to us, and no other site may frame the pages or receive their forms.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    # The origin check falls back to Referer when a browser sends no Origin; keep it on our own requests.
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
)

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What the rate limit counts: every way to submit a job (valid or not), and login attempts.
SUBMIT_PATHS = frozenset({"/api/jobs", "/jobs", "/sdapi/v1/txt2img", "/v1/images/generations"})
AGAIN_SUFFIX = "/again"  # POST /jobs/{id}/again and /api/jobs/{id}/again queue a copy of a job
LOGIN_PATH = "/login"
# Bodies that may be as large as max_upload_bytes: a PNG, sent as a multipart form or as the body.
UPLOAD_TYPES = ("multipart/form-data", "image/png")
# Reachable without the token: probes, the login form, and the files the login page itself needs.
OPEN_PATHS = frozenset({"/health", "/ready", LOGIN_PATH, "/logout"})
OPEN_PREFIXES = ("/static/",)

SESSION_COOKIE = "zimage_sse_session"
SESSION_MAX_AGE_S = 30 * 24 * 3600
# A Last-Event-ID is one of our decimal event numbers; 19 digits hold any int64.
MAX_EVENT_ID_DIGITS = 19


def security_middleware(settings: Settings) -> list[Middleware]:
    """The guards, outermost first: headers go on every answer, including the guards' own."""
    return [
        Middleware(SecurityHeaders),
        Middleware(RequestLimits, settings=settings),
        Middleware(CrossSiteGuard),
        Middleware(TokenAuth, settings=settings),
        Middleware(SubmitRateLimit, settings=settings),
    ]


def decimal(text: str) -> bool:
    """Digits int() takes: str.isdigit() alone also accepts "²" and other digits int() refuses."""
    return text.isascii() and text.isdigit()


# -- security headers ----------------------------------------------------------------------------------


class SecurityHeaders:
    """CSP, nosniff, referrer and framing headers on every HTTP response (a route may set its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- request limits ------------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


class RequestLimits:
    """413 for a body over the limit (announced by Content-Length or found while reading it, chunked
    uploads included), 400 for a Last-Event-ID that is not one of our event numbers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_upload = settings.max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        event_id = headers.get("last-event-id", "").strip()
        if event_id and not (decimal(event_id) and len(event_id) <= MAX_EVENT_ID_DIGITS):
            reason = f"must be an event id this server sent (a whole number), not {event_id[:40]!r}"
            await reject(scope, receive, send, 400, reason, field="Last-Event-ID")
            return
        upload = headers.get("content-type", "").startswith(UPLOAD_TYPES)
        limit = self.max_upload if upload else self.max_body
        too_large = f"is larger than the limit of {limit} bytes"
        length = headers.get("content-length")
        if length is not None and decimal(length) and int(length) > limit:
            await reject(scope, receive, send, 413, too_large, field="body")
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:  # too late to answer: the connection just ends
                return
            await reject(scope, receive, send, 413, too_large, field="body")


# -- cross-site requests -------------------------------------------------------------------------------


def cross_site_reason(scope: Scope) -> str | None:
    """Why an unsafe request looks cross-site, or None. The same rule as Go's CrossOriginProtection:
    a browser's Sec-Fetch-Site is authoritative (same-origin, or none for a user's own navigation);
    without it the Origin (else the Referer) must name this host; a request with none of them is not
    from a browser (curl, the CLI) and passes."""
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"Sec-Fetch-Site is {site!r}"
    for name in ("origin", "referer"):
        value = headers.get(name)
        if value is None:
            continue
        netloc = urlsplit(value).netloc if value != "null" else ""
        if netloc and netloc.lower() == headers.get("host", "").lower():
            return None
        return f"{name.capitalize()} {value!r} is not this server"
    return None


class CrossSiteGuard:
    """403 for a form post, cancel or API call that another site's page made the browser send."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            reason = cross_site_reason(scope)
            if reason is not None:
                message = f"Cross-site request refused: {reason}."
                await reject(scope, receive, send, 403, message)
                return
        await self.app(scope, receive, send)


# -- access token --------------------------------------------------------------------------------------


def session_cookie(token: str, issued_at: int) -> str:
    """`ISSUED.HMAC(token, ISSUED)`: proves the login without holding the token, and expires."""
    mac = hmac.new(token.encode(), f"zimage-sse session {issued_at}".encode(), hashlib.sha256)
    return f"{issued_at}.{mac.hexdigest()}"


def valid_session(token: str, value: str, now: float) -> bool:
    issued, _, _mac = value.partition(".")
    if not decimal(issued) or len(issued) > 12 or not 0 <= now - int(issued) <= SESSION_MAX_AGE_S:
        return False
    return hmac.compare_digest(session_cookie(token, int(issued)).encode(), value.encode())


def basic_password(credentials: str) -> str | None:
    """The password of HTTP Basic credentials (`base64(user:password)`), or None when malformed."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon else None


def authorised(token: str, headers: Headers, cookies: dict[str, str]) -> bool:
    """The token as a bearer, as HTTP Basic's password (any user name: AUTOMATIC1111's clients send
    `--api-auth user:password`), or a valid session cookie from /login."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        given = basic_password(given) or ""
    given = given.strip()
    if scheme in ("bearer", "basic") and given and hmac.compare_digest(given.encode(), token.encode()):
        return True
    cookie = cookies.get(SESSION_COOKIE)
    return cookie is not None and valid_session(token, cookie, time.time())


def safe_next(value: str | None) -> str:
    """Where to go after login: a path on this server only (not //host or /\\host), else home."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or "\\" in value:
        return "/"
    return value


class TokenAuth:
    """With ZIMAGE_SSE_TOKEN set, everything but probes, static files and login needs the token:
    pages redirect to /login?next=…, the API, streams and images answer 401 with WWW-Authenticate."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.token = settings.token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.token or scope["type"] != "http" or _open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if authorised(self.token, request.headers, request.cookies):
            await self.app(scope, receive, send)
            return
        if wants_page(scope):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            back = target if scope["method"] in ("GET", "HEAD") else "/"
            await RedirectResponse(f"{LOGIN_PATH}?next={quote(back, safe='')}", status_code=303)(
                scope, receive, send
            )
            return
        # A1111's clients authenticate with Basic (the token as the password); everyone else a bearer.
        scheme = "Basic" if scope["path"].startswith(A1111_PREFIX) else "Bearer"
        await reject(
            scope,
            receive,
            send,
            401,
            "This server needs its access token: send `Authorization: Bearer TOKEN` (or HTTP Basic with"
            " the token as the password), or log in at /login.",
            headers={"WWW-Authenticate": f'{scheme} realm="zimage-sse"'},
        )


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


# -- rate limit ----------------------------------------------------------------------------------------


class TokenBucket:
    """Per-key token buckets: `burst` at once, then `rate_per_s`. Full buckets are forgotten, so the
    table holds only clients that submitted recently."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate_per_s, float(burst), clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key → (tokens, when)

    def take(self, key: object) -> float:
        """Take one token: 0 when allowed, else the seconds until one is there."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > 4096:
            self._forget_full(now)
        return 0.0

    def give_back(self, key: object) -> None:
        """Return a token taken for a request that did not use what the limit protects."""
        tokens, then = self._buckets.get(key, (self.burst - 1, self.clock()))
        self._buckets[key] = (min(self.burst, tokens + 1), then)

    def _forget_full(self, now: float) -> None:
        for key, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate >= self.burst:
                del self._buckets[key]


def is_submission(path: str) -> bool:
    return path in SUBMIT_PATHS or (path.startswith(("/jobs/", "/api/jobs/")) and path.endswith(AGAIN_SUFFIX))


class SubmitRateLimit:
    """429 with Retry-After for a client address past its submissions (or login attempts) per minute.

    What it protects is the queue, so a submission answered 4xx (invalid, queue full) gives its token
    back: correcting a form does not use up the rate, while every login attempt counts.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        enabled = settings.submit_rate > 0 and settings.submit_burst > 0
        self.bucket = TokenBucket(settings.submit_rate / 60, settings.submit_burst) if enabled else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            self.bucket is None
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or not (is_submission(path) or path == LOGIN_PATH)
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        key = (path == LOGIN_PATH, address)
        wait = self.bucket.take(key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            what = "login attempts" if path == LOGIN_PATH else "submissions"
            message = f"Too many {what} from {address}: try again in {retry} s."
            await reject(scope, receive, send, 429, message, headers={"Retry-After": str(retry)})
            return
        status = 0

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, noting_status)
        if path != LOGIN_PATH and 400 <= status < 500:
            self.bucket.give_back(key)
