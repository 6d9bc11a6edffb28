"""Response headers that make the browser enforce what the server promises.

The Content-Security-Policy allows nothing from outside the app: styles and scripts only from its own
static files (no inline code: templates carry none), no frames, forms posting only to the app. Pages
are never cached (they show model answers and session-bound CSRF tokens).
"""

from __future__ import annotations

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY"), (b"content-security-policy", CSP.encode())]
_PAGES = [(b"cache-control", b"no-store")]


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """Headers added to every response (raw ASGI pairs); pages also get `Cache-Control: no-store`."""
    return _COMMON + (_PAGES if path.startswith("/ui") and not path.startswith("/ui/static") else [])


def cookie_options(tls: bool) -> dict:
    """Attributes of every cookie the app sets: HttpOnly, SameSite=Strict, Secure under TLS, whole app."""
    return {"httponly": True, "samesite": "strict", "secure": tls, "path": "/"}
