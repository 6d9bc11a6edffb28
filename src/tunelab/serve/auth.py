"""Who is calling: API keys (Bearer), browser sessions (cookie) and CSRF tokens, as FastAPI dependencies.

Routers declare what they need once (`APIRouter(dependencies=[Depends(require_api_key)])`); handlers
never check by hand. A session is created by signing in with an API key; it lives in the server's
memory (a random id in an HttpOnly, SameSite=Strict cookie, Secure under TLS), ends at sign-out, after
`serve.session_ttl_s`, or as soon as its key is revoked. Every form carries the session's CSRF token;
the sign-in form, before there is a session, a double-submit token (cookie + field).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import Depends, Request

from tunelab.serve.errors import ApiError
from tunelab.serve.keys import Principal

SESSION_COOKIE = "tunelab_session"
LOGIN_COOKIE = "tunelab_login_csrf"


@dataclass
class Session:
    id: str
    key_id: str
    name: str
    csrf: str
    expires: float


class SessionRequired(Exception):
    """No live session: pages answer 401 with a link to sign in (see ui.py's handler)."""


class Sessions:
    """Live browser sessions by id (thread-safe; in memory: a restart signs everyone out)."""

    def __init__(self, keys, ttl_s: int):
        self.keys, self.ttl = keys, ttl_s
        self._s: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, p: Principal) -> Session:
        s = Session(secrets.token_urlsafe(32), p.key_id, p.name, secrets.token_urlsafe(32), time.time() + self.ttl)
        with self._lock:
            self._s = {k: v for k, v in self._s.items() if v.expires > time.time()}   # forget expired ones
            self._s[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._s.get(sid)
        if s is None or s.expires < time.time() or not self.keys.is_live(s.key_id):
            self.drop(sid)
            return None
        return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._s.pop(sid or "", None)


def _state(request: Request):
    return request.app.state.tunelab


def bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _authenticate(request: Request, scopes: tuple[str, ...]) -> Principal:
    p = _state(request).keys.verify(bearer(request))
    if p is None:
        raise ApiError(401, "Incorrect API key provided: send `Authorization: Bearer <key>` with a key from "
                       "`tunelab keys create`", "invalid_api_key")
    request.state.key_id = p.key_id
    if p.scope not in scopes:
        raise ApiError(401, f"this key's scope ({p.scope}) does not allow {request.url.path}", "invalid_api_key")
    return p


async def require_api_key(request: Request) -> Principal:
    """A live `api` key (the API routes)."""
    return _authenticate(request, ("api",))


async def require_metrics(request: Request) -> Principal:
    """A live key of any scope: an `api` key or a `metrics` scrape token."""
    return _authenticate(request, ("api", "metrics"))


async def require_session(request: Request) -> Session:
    """The signed-in browser session (pages)."""
    s = _state(request).sessions.get(request.cookies.get(SESSION_COOKIE))
    if s is None:
        raise SessionRequired()
    request.state.key_id = s.key_id
    return s


def check_csrf(expected: str | None, given: str | None) -> None:
    """Constant-time comparison of a form's CSRF token with the expected one; 403 when they differ."""
    if not expected or not given or not hmac.compare_digest(expected, given):
        raise ApiError(403, "the form's CSRF token is missing or wrong: reload the page and submit again", "csrf")


async def require_csrf(request: Request, session: Session = Depends(require_session)) -> Session:
    """A session whose form carries its CSRF token (every state-changing page request)."""
    form = await request.form()
    check_csrf(session.csrf, form.get("csrf_token"))
    return session
