"""The console's Starlette app: sign-in, CSRF-checked actions, audit events, the pages.

Sign-in takes an internal key (``BRIDGE_INTERNAL_KEYS``) and keeps only the key's id in Starlette's
``SessionMiddleware`` cookie: signed with itsdangerous (a key derived from the internal keys, so every
receiver process accepts it and rotating the keys signs everyone out), ``HttpOnly``, ``SameSite=Strict``,
scoped to ``/console``, expiring after ``BRIDGE_CONSOLE_SESSION_SECONDS``. Every form carries the
session's CSRF token; a post without it is refused with 403. Every action publishes ``operator.action``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import jinja2
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from workers.core import keys
from workers.core.events import Event, EventType
from workers.core.log import get_logger
from workers.core.redis_client import redis_from_settings
from workers.core.settings import Settings
from workers.fanout import dead_events, webhooks
from workers.fanout.publisher import Publisher
from workers.jobs import api as commands_api
from workers.ops.console import views
from workers.runtime import dead_letters

log = get_logger(__name__)

MOUNT_PATH = "/console"
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def key_id(key: str) -> str:
    """A short, stable, non-secret name of an internal key (what the audit event records)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def session_secret(settings: Settings) -> str:
    material = "\n".join(sorted(k.get_secret_value() for k in settings.bridge_internal_keys))
    return hmac.new(b"workfloo-bridge console session", material.encode(), hashlib.sha256).hexdigest()


class Console:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
        self.templates = Jinja2Templates(env=env)
        self._client: redis.Redis | None = None
        # Sessions name one of these; with no internal key configured nobody can sign in.
        self.key_ids = frozenset(
            key_id(k.get_secret_value()) for k in settings.bridge_internal_keys if k.get_secret_value()
        )

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            url = self.settings.bridge_console_redis_url or self.settings.redis_url
            self._client = redis_from_settings(self.settings.model_copy(update={"redis_url": url}))
        return self._client

    # --- sessions ------------------------------------------------------------------------------
    def csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return str(token)

    async def checked_form(self, request: Request) -> dict[str, str]:
        form = await request.form()
        sent = str(form.get("csrf", ""))
        expected = str(request.session.get("csrf", ""))
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPException(403, "CSRF token missing or wrong")
        return {k: str(v) for k, v in form.items()}

    def actor(self, request: Request) -> str | None:
        """Who is signed in: ``sso:<identity>`` when a trusted header names one, else ``key:<id>``."""
        signed_in = request.session.get("key_id")
        if not signed_in or signed_in not in self.key_ids:  # a key removed since: signed out
            return None
        header = self.settings.bridge_console_sso_header.strip()
        if header and (identity := request.headers.get(header, "").strip()):
            return f"sso:{identity[:200]}"
        return f"key:{signed_in}"

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        context.update(
            csrf=self.csrf(request),
            actor=self.actor(request),
            flash=request.session.pop("flash", None),
            base=MOUNT_PATH,
        )
        response: Response = self.templates.TemplateResponse(
            request, template, context, status_code=status_code, headers=SECURITY_HEADERS
        )
        return response

    def audit(self, actor: str, action: str, target: str, outcome: str, execution_id: str | None) -> None:
        Publisher(self.client, self.settings).publish(
            Event(
                type=EventType.OPERATOR_ACTION,
                execution_id=execution_id,
                data={"actor": actor, "action": action, "target": target, "outcome": outcome},
            )
        )
        log.info("operator_action", actor=actor, action=action, target=target, outcome=outcome)

    # --- pages ---------------------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        return self.render(request, "login.html")

    async def login(self, request: Request) -> Response:
        form = await self.checked_form(request)
        presented = form.get("key", "").encode()
        matched: str | None = None
        for key in self.settings.bridge_internal_keys:
            value = key.get_secret_value()
            if value and hmac.compare_digest(presented, value.encode()):
                matched = key_id(value)
        if matched is None:
            return self.render(request, "login.html", status_code=401, error="That key is not accepted.")
        request.session.clear()
        request.session.update(key_id=matched, csrf=secrets.token_urlsafe(32))
        return RedirectResponse(f"{MOUNT_PATH}/", status_code=303)

    async def logout(self, request: Request) -> Response:
        await self.checked_form(request)
        request.session.clear()
        return RedirectResponse(f"{MOUNT_PATH}/login", status_code=303)

    def _signed_in(self, request: Request) -> str:
        actor = self.actor(request)
        if actor is None:
            raise HTTPException(303, headers={"location": f"{MOUNT_PATH}/login"})
        return actor

    async def overview(self, request: Request) -> Response:
        self._signed_in(request)
        status = await run_in_threadpool(views.overview, self.client, self.settings)
        return self.render(request, "overview.html", status=status)

    async def applications(self, request: Request) -> Response:
        self._signed_in(request)
        query = request.query_params.get("q", "").strip()[:200]
        if query:
            found = await run_in_threadpool(views.find_application, self.client, query)
            if found:
                return RedirectResponse(f"{MOUNT_PATH}/applications/{found}", status_code=303)
        state = request.query_params.get("state", "")
        state = state if state in views.STATES else ""
        recent = await run_in_threadpool(views.recent_applications, self.client, self.settings)
        if state:
            recent = [a for a in recent if a["state"] == state]
        return self.render(
            request,
            "applications.html",
            recent=recent,
            query=query,
            not_found=bool(query),
            states=views.STATES,
            state=state,
        )

    async def application(self, request: Request) -> Response:
        self._signed_in(request)
        execution_id = request.path_params["execution_id"]
        app = await run_in_threadpool(views.application, self.client, self.settings, execution_id)
        if not app["timeline"]["count"]:
            return self.render(
                request, "applications.html", status_code=404, recent=[], query=execution_id, not_found=True
            )
        return self.render(request, "application.html", app=app)

    async def dead_letters_page(self, request: Request) -> Response:
        self._signed_in(request)
        letters = await run_in_threadpool(views.dead_letter_list, self.client, self.settings)
        return self.render(request, "dead_letters.html", letters=letters)

    async def replay(self, request: Request) -> Response:
        actor = self._signed_in(request)
        form = await self.checked_form(request)
        job_id = request.path_params["job_id"]

        def act() -> tuple[str, str | None]:
            letters = dead_letters.list_dead_letters(self.client, self.settings.bridge_queue)
            execution_id = next((d.execution_id for d in letters if d.job_id == job_id), None)
            try:
                dead_letters.replay(self.client, self.settings.bridge_queue, job_id)
            except LookupError:
                outcome = "not_found"
            else:
                outcome = "done"
            self.audit(actor, "dead_letter.replay", job_id, outcome, execution_id)
            return outcome, execution_id

        outcome, _ = await run_in_threadpool(act)
        request.session["flash"] = (
            f"Replayed {job_id}." if outcome == "done" else f"{job_id} is not a dead letter any more."
        )
        back = form.get("back", "")
        target = back if back.startswith(f"{MOUNT_PATH}/") else f"{MOUNT_PATH}/dead-letters"
        return RedirectResponse(target, status_code=303)

    async def replay_all(self, request: Request) -> Response:
        actor = self._signed_in(request)
        await self.checked_form(request)

        def act() -> list[str]:
            queue = self.settings.bridge_queue
            letters = dead_letters.list_dead_letters(self.client, queue)
            execution_of = {d.job_id: d.execution_id for d in letters}
            done = dead_letters.replay_all(self.client, queue)
            for job_id in done:
                self.audit(actor, "dead_letter.replay_all", job_id, "done", execution_of.get(job_id))
            if not done:
                self.audit(actor, "dead_letter.replay_all", queue, "none", None)
            return done

        done = await run_in_threadpool(act)
        request.session["flash"] = f"Replayed {len(done)} dead letters."
        return RedirectResponse(f"{MOUNT_PATH}/dead-letters", status_code=303)

    async def resend_nip(self, request: Request) -> Response:
        actor = self._signed_in(request)
        await self.checked_form(request)
        execution_id = request.path_params["execution_id"]

        def act() -> str | None:
            if not self.client.exists(keys.timeline(execution_id)):
                return None
            command_id = commands_api.resend_nip(self.client, execution_id, settings=self.settings)
            self.audit(actor, "nip.resend", execution_id, "queued", execution_id)
            return command_id

        command_id = await run_in_threadpool(act)
        if command_id is None:
            raise HTTPException(404, "no such application")
        request.session["flash"] = f"NIP resend queued as {command_id}."
        return RedirectResponse(f"{MOUNT_PATH}/applications/{execution_id}", status_code=303)

    async def dead_events_page(self, request: Request) -> Response:
        self._signed_in(request)
        entries = await run_in_threadpool(views.dead_event_list, self.client)
        return self.render(request, "dead_events.html", entries=entries)

    async def dead_event_replay(self, request: Request) -> Response:
        actor = self._signed_in(request)
        await self.checked_form(request)
        entry_id = request.path_params["entry_id"]

        def act() -> str:
            found = dead_events.list_dead_events(self.client, count=views.DEAD_EVENTS_SHOWN)
            execution_id = next((e.execution_id for e in found if e.entry_id == entry_id), None)
            try:
                dead_events.replay(self.client, self.settings, entry_id)
            except (LookupError, redis.ResponseError):
                outcome = "not_found"
            else:
                outcome = "done"
            self.audit(actor, "dead_event.replay", entry_id, outcome, execution_id or None)
            return outcome

        outcome = await run_in_threadpool(act)
        request.session["flash"] = (
            f"Replayed {entry_id}." if outcome == "done" else f"{entry_id} cannot be replayed."
        )
        return RedirectResponse(f"{MOUNT_PATH}/dead-events", status_code=303)

    async def subscribers_page(self, request: Request) -> Response:
        self._signed_in(request)
        found = await run_in_threadpool(views.subscribers, self.client, self.settings)
        return self.render(request, "subscribers.html", subscribers=found)

    async def subscriber_action(self, request: Request) -> Response:
        actor = self._signed_in(request)
        await self.checked_form(request)
        key = request.path_params["key"]
        action = request.path_params["action"]
        if action not in ("disable", "enable") or webhooks.find_subscriber(self.settings, key) is None:
            raise HTTPException(404, "no such subscriber")

        def act() -> str:
            change = webhooks.disable if action == "disable" else webhooks.enable
            outcome = "done" if change(self.client, key) else "unchanged"
            self.audit(actor, f"subscriber.{action}", key, outcome, None)
            return outcome

        outcome = await run_in_threadpool(act)
        request.session["flash"] = f"Subscriber {key}: {action}d." if outcome == "done" else "No change."
        return RedirectResponse(f"{MOUNT_PATH}/subscribers", status_code=303)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.overview, methods=["GET"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/applications", self.applications, methods=["GET"]),
            Route("/applications/{execution_id}", self.application, methods=["GET"]),
            Route("/dead-letters", self.dead_letters_page, methods=["GET"]),
            Route("/dead-letters/replay-all", self.replay_all, methods=["POST"]),
            Route("/dead-letters/{job_id}/replay", self.replay, methods=["POST"]),
            Route("/applications/{execution_id}/resend-nip", self.resend_nip, methods=["POST"]),
            Route("/dead-events", self.dead_events_page, methods=["GET"]),
            Route("/dead-events/{entry_id}/replay", self.dead_event_replay, methods=["POST"]),
            Route("/subscribers", self.subscribers_page, methods=["GET"]),
            Route("/subscribers/{key}/{action:str}", self.subscriber_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 303 and exc.headers:
        return RedirectResponse(exc.headers["location"], status_code=303)
    return Response(
        str(exc.detail), status_code=exc.status_code, media_type="text/plain", headers=SECURITY_HEADERS
    )


def console_app(settings: Settings) -> Starlette:
    console = Console(settings)
    return Starlette(
        routes=console.routes(),
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=session_secret(settings),
                session_cookie="bridge_console",
                max_age=settings.bridge_console_session_seconds,
                path=MOUNT_PATH,
                same_site="strict",
                https_only=False,  # the internal listener is plain HTTP behind the operator's proxy
            )
        ],
        exception_handlers={HTTPException: _http_error},
    )


def console_routes(settings: Settings) -> list[BaseRoute]:
    """The console mounted at ``/console``: what ``serve`` adds to the internal listener."""
    return [Mount(MOUNT_PATH, app=console_app(settings))]
