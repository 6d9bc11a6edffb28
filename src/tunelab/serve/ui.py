"""The web interface at /ui: sign in with an API key, chat with a served model, classify with a label-set
model (label and probabilities), and read a model's card (its test metrics against the baselines).

Pages are server-rendered Jinja2 templates (`src/tunelab/templates/serve/`) with no scripts and no
external assets: a form posts, the page comes back with the answer. `pages_router` needs a session
(and its CSRF token on every POST); `login_router` is the public sign-in form.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tunelab.core.templating import STATIC_DIR, TEMPLATES_DIR, install
from tunelab.serve.auth import (LOGIN_COOKIE, SESSION_COOKIE, Session, SessionRequired, check_csrf, require_csrf,
                                require_session)
from tunelab.serve.errors import ApiError
from tunelab.serve.security import cookie_options

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))   # autoescape is on for .html
install(templates.env)                                      # the filters and globals report.html uses
MAX_INPUT_CHARS = 8000


def static_app() -> StaticFiles:
    """The package's stylesheets (mounted at /ui/static; public, the sign-in page needs them)."""
    return StaticFiles(directory=str(STATIC_DIR))


def render(request: Request, name: str, status: int = 200, session: Session | None = None, **context) -> HTMLResponse:
    """A page from `templates/`, with the session (for its CSRF token and the sign-out form)."""
    st = request.app.state.tunelab
    return templates.TemplateResponse(request, name, {"session": session, "models": st.models,
                                                      "css_href": "/ui/static/tunelab.css", **context},
                                      status_code=status)


async def session_required(request: Request, exc: SessionRequired) -> Response:
    """Pages without a live session answer 401 with a link to the sign-in page."""
    return render(request, "serve/signin_required.html", status=401)


# ---------------------------------------------------------------- sign in / sign out (public)

login_router = APIRouter(prefix="/ui")


@login_router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, error: str | None = None):
    token = secrets.token_urlsafe(32)
    page = render(request, "serve/login.html", login_csrf=token, error=error)
    page.set_cookie(LOGIN_COOKIE, token, max_age=600, **cookie_options(request.app.state.tunelab.tls))
    return page


@login_router.post("/login")
async def login(request: Request, api_key: str = Form(..., max_length=200), csrf_token: str = Form("")):
    st = request.app.state.tunelab
    check_csrf(request.cookies.get(LOGIN_COOKIE), csrf_token)
    principal = st.keys.verify(api_key.strip())
    if principal is None or principal.scope != "api":
        page = render(request, "serve/login.html", status=401, login_csrf=request.cookies.get(LOGIN_COOKIE),
                      error="That key is not a valid API key of this server.")
        return page
    request.state.key_id = principal.key_id
    session = st.sessions.create(principal)
    page = RedirectResponse("/ui/", status_code=303)
    page.set_cookie(SESSION_COOKIE, session.id, max_age=st.cfg.session_ttl_s, **cookie_options(st.tls))
    page.delete_cookie(LOGIN_COOKIE, path="/")
    return page


# ---------------------------------------------------------------- pages (a session)

pages_router = APIRouter(prefix="/ui", dependencies=[Depends(require_session)])


def _served(request: Request, model: str):
    try:
        return request.app.state.tunelab.model(model)
    except ApiError as e:
        raise ApiError(e.status, e.message, e.code) from None


@pages_router.get("/", response_class=HTMLResponse)
async def home(request: Request, session: Session = Depends(require_session)):
    return render(request, "serve/home.html", session=session)


@pages_router.post("/logout")
async def logout(request: Request, session: Session = Depends(require_csrf)):
    request.app.state.tunelab.sessions.drop(session.id)
    page = RedirectResponse("/ui/login", status_code=303)
    page.delete_cookie(SESSION_COOKIE, path="/")
    return page


@pages_router.get("/chat", response_class=HTMLResponse)
async def chat_page(request: Request, model: str, session: Session = Depends(require_session)):
    return render(request, "serve/chat.html", session=session, model=_served(request, model))


@pages_router.post("/chat", response_class=HTMLResponse)
async def chat(request: Request, model: str = Form(...), message: str = Form(..., min_length=1, max_length=MAX_INPUT_CHARS),
               session: Session = Depends(require_csrf)):
    from starlette.concurrency import run_in_threadpool

    from tunelab.serve.openai_api import answer

    served = _served(request, model)
    request.state.model = served.id
    try:
        prompt, text = await run_in_threadpool(served.chat_prompt, [{"role": "user", "content": message}])
        out = await answer(request, served, prompt, text, request.app.state.tunelab.cfg.default_max_tokens)
    except ApiError as e:
        return render(request, "serve/chat.html", status=e.status, session=session, model=served, message=message,
                      error=e.message)
    return render(request, "serve/chat.html", session=session, model=served, message=message, reply=out.text)


@pages_router.get("/classify", response_class=HTMLResponse)
async def classify_page(request: Request, model: str, session: Session = Depends(require_session)):
    return render(request, "serve/classify.html", session=session, model=_served(request, model))


@pages_router.post("/classify", response_class=HTMLResponse)
async def classify(request: Request, model: str = Form(...), text: str = Form(..., min_length=1, max_length=MAX_INPUT_CHARS),
                   session: Session = Depends(require_csrf)):
    from starlette.concurrency import run_in_threadpool

    from tunelab.serve.openai_api import answer

    served = _served(request, model)
    request.state.model = served.id
    if served.serving != "classify" and served.trie is None:
        return render(request, "serve/classify.html", status=400, session=session, model=served, text=text,
                      error=f"{served.id} answers free text, not a label set: use its chat page")
    prompt, shown = await run_in_threadpool(served.input_prompt, text)
    out = await answer(request, served, prompt, shown, 1, want_probs=True)
    ranked = sorted(out.probabilities.items(), key=lambda kv: -kv[1])
    return render(request, "serve/classify.html", session=session, model=served, text=text, label=out.label,
                  ranked=ranked)


@pages_router.get("/models/{model:path}", response_class=HTMLResponse)
async def model_card(request: Request, model: str, session: Session = Depends(require_session)):
    from tunelab.serve.cards import card_rows

    served = _served(request, model)
    return render(request, "serve/card.html", session=session, model=served, card=card_rows(served))
