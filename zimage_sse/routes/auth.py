"""Login and logout for the pages when ZIMAGE_SSE_TOKEN is set (the API takes the token as a bearer).

The cookie holds an HMAC of the token with its issue time (security.session_cookie), never the token:
HttpOnly so page scripts cannot read it, SameSite=Strict so other sites' requests do not carry it.
"""

from __future__ import annotations

import hmac
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..security import LOGIN_PATH, SESSION_COOKIE, SESSION_MAX_AGE_S, safe_next, session_cookie
from ..templating import render
from .api import settings_of


def _login_page(request: Request, next_path: str, error: str | None, status_code: int = 200) -> Response:
    return render(request, "login.html", {"next": next_path, "error": error}, status_code)


async def login_form(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if not settings_of(request).token:
        return RedirectResponse(next_path, status_code=303)  # nothing to log in to
    return _login_page(request, next_path, None)


async def login(request: Request) -> Response:
    form = await request.form()
    given, next_value = form.get("token"), form.get("next")
    next_path = safe_next(next_value if isinstance(next_value, str) else None)
    token = settings_of(request).token
    if not token:
        return RedirectResponse(next_path, status_code=303)
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
        return _login_page(request, next_path, "That is not this server's token.", status_code=401)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_cookie(token, int(time.time())),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


routes = [
    Route(LOGIN_PATH, login_form, methods=["GET"]),
    Route(LOGIN_PATH, login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
