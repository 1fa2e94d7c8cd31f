"""The dashboard's routes on the scheduler's aiohttp application: the calls page (``/``)
and its live fragment, one call's page (``/calls/{id}``), the actions on a call (POST),
the overview, the schedules (``schedules.py``), login and logout, the stylesheet and
script.

Who may look: with ``--insecure``, anyone who reaches the address; else a viewer who
sends ``Authorization: Bearer <api key>``, or who logged in with a key (a session cookie,
``session.py``). Every action is a POST; one made with the session cookie must carry the
session's CSRF token, and every action and login by a browser must come from a page of
this address (its ``Origin``, else its ``Referer``)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from ...core.errors import InvalidArgument, refuses
from ..store import COUNT_CAP, Call, State, unavailable
from ..store.limits import holding, limits_text
from . import session, views
from .actions import ACTIONS, Action, offered
from .login_limits import FailedLogins
from .overview import Overview, queue_overview
from .schedules import SchedulesPage

if TYPE_CHECKING:
    from ..api import Api

logger = logging.getLogger(__name__)

ASSETS = ("dashboard.css", "dashboard.js")
_TYPES = {".css": "text/css", ".js": "text/javascript"}
# No inline script or style, nothing from elsewhere, never in a frame (a Cancel button
# under another site's overlay).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Page = Callable[[web.Request, "Viewer"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Viewer:
    """Who is looking, and how they were let in."""

    via: str
    """``open`` (--insecure), ``bearer`` (the Authorization header) or ``session``."""
    csrf: str = ""


class Dashboard:
    """The dashboard of one scheduler process, over its API's store and handlers."""

    def __init__(
        self,
        api: Api,
        *,
        actions: tuple[Action, ...] = ACTIONS,
        overview: Overview | None = None,
    ) -> None:
        self.api = api
        self.actions = actions
        self.failed_logins = FailedLogins()
        self.overview = overview or queue_overview
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader(__package__ or __name__, "templates"),
            autoescape=True,  # every value is escaped unless a template says otherwise
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        folder = resources.files(__package__ or __name__) / "static"
        self.assets = {name: (folder / name).read_bytes() for name in ASSETS}
        # Each asset's link names its content: a new version is fetched at once.
        self.templates.globals["asset"] = {
            name: f"/assets/{name}?v={hashlib.sha256(data).hexdigest()[:12]}"
            for name, data in self.assets.items()
        }

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/", self.page(self.calls))
        app.router.add_get("/fragments/calls", self.page(self.calls_fragment, fragment=True))
        app.router.add_get("/calls/{dispatch_id}", self.page(self.call))
        # Before the actions' route, which would take "send" for an action's name.
        send = self.page(self.send_message, form=True)
        app.router.add_post("/calls/{dispatch_id}/send", send)
        app.router.add_post("/calls/{dispatch_id}/{action}", self.page(self.act, form=True))
        app.router.add_get("/overview", self.page(self.show_overview))
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.page(self.logout, form=True))
        app.router.add_get("/assets/{name}", self.asset)
        SchedulesPage(self).mount(app)

    # --- who may look, and what a page answers ---------------------------------------

    def viewer(self, request: web.Request) -> Viewer | None:
        api = self.api
        if api.insecure:
            return Viewer("open")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return Viewer("bearer") if session.key_matches(token, api.api_keys) else None
        cookie = request.cookies.get(session.COOKIE)
        if cookie:
            found = session.verify(cookie, api.api_keys, api.clock())
            if found is not None:
                return Viewer("session", found.csrf)
        return None

    def page(self, handler: Page, *, fragment: bool = False, form: bool = False) -> Handler:
        """``handler`` for viewers only (others are sent to the login form, or refused
        with 401), a POST checked against cross-site forgery (``form``), its errors
        answered with a page that says what went wrong."""

        async def serve(request: web.Request) -> web.StreamResponse:
            viewer = self.viewer(request)
            if viewer is None:
                if fragment or form:
                    return self.error(None, 401, "Log in again: no valid session or key.")
                target = urllib.parse.urlencode({"next": request.path_qs})
                raise web.HTTPSeeOther(f"/login?{target}")
            try:
                if form:
                    await self.check_form(request, viewer)
                return await handler(request, viewer)
            except web.HTTPException:
                raise
            except Exception as exc:
                if unavailable(exc):
                    logger.exception("a dashboard page failed")
                    return self.error(viewer, 503, "The database cannot be reached now.")
                if refuses(exc):
                    return self.error(viewer, exc.http_status, str(exc))
                logger.exception("a dashboard page failed unexpectedly")
                return self.error(viewer, 500, "The page failed: see the scheduler's log.")

        return serve

    async def check_form(self, request: web.Request, viewer: Viewer) -> None:
        """Refuse a POST that another site may have made: one whose Origin (else
        Referer) is not this address, or, with a session, without its CSRF token."""
        if viewer.via == "bearer":
            return  # a browser never adds the header by itself
        if not same_origin(request):
            raise Forbidden("This action must be sent from the dashboard's own pages.")
        if viewer.via == "session":
            given = str((await request.post()).get("csrf", ""))
            if not hmac.compare_digest(given.encode(), viewer.csrf.encode()):
                raise Forbidden("The form's token is missing or stale: reload the page.")

    def render(
        self, viewer: Viewer | None, template: str, answer: int = 200, **context: Any
    ) -> web.Response:
        body = self.templates.get_template(template).render(
            viewer=viewer, count_cap=COUNT_CAP, **context
        )
        response = web.Response(text=body, status=answer, content_type="text/html")
        response.headers.update(_HEADERS)
        return response

    def error(self, viewer: Viewer | None, status: int, message: str) -> web.Response:
        return self.render(viewer, "error.html", status, status=status, message=message)

    # --- the calls page ----------------------------------------------------------------

    async def calls(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        filters = views.read_filters(request.query)
        notice = ""
        if filters.search:
            found = await self.api.store.get(filters.search)
            if found is not None:
                raise web.HTTPSeeOther(call_url(found.dispatch_id))
            notice = f"No call has the dispatch id {filters.search!r}."
        return self.render(
            viewer,
            "calls.html",
            path="/",
            filters=filters,
            notice=notice,
            statuses=views.FINAL_STATUSES,
            sizes=views.PAGE_SIZES,
            **await self.listing(filters),
        )

    async def calls_fragment(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        filters = views.read_filters(request.query)
        listing = await self.listing(filters)
        return self.render(viewer, "calls_live.html", filters=filters, **listing)

    async def listing(self, filters: views.Filters) -> dict[str, Any]:
        store = self.api.store
        counts = await store.count_by_state()
        found = await store.list(**filters.store_filters(), limit=filters.size + 1)
        page = found[: filters.size]
        following = page[-1].dispatch_id if len(found) > filters.size else ""
        return {
            "counts": [(state.value, counts.get(state, 0)) for state in State],
            "rows": [views.Row(call) for call in page],
            "following": following,
            "now": views.moment(self.api.clock()),
        }

    # --- one call ------------------------------------------------------------------------

    async def call(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        call = await self.found(request)
        state = views.coroutine_state(call)
        tree = await self.api.store.list(root_id=call.root_id, limit=views.TREE_LIMIT + 1)
        children = [c for c in tree if c.parent_id == call.dispatch_id]
        journal, steps = views.journal_steps(state, children)
        shown = views.CallPage(
            call=call,
            input=views.shown_any(call.input),
            result=views.read_result(call.result),
            tree=views.tree_rows(tree[: views.TREE_LIMIT], call.root_id),
            tree_cut=len(tree) > views.TREE_LIMIT,
            journal=journal,
            steps=steps,
            state_description="" if state is None or journal is not None else state.type_url,
            attempts_history=views.attempt_rows(await self.api.store.history(call.dispatch_id)),
            limits=limits_text(call.limits),
            held_by=await self.held_by(call),
        )
        done = request.query.get("done", "")
        return self.render(
            viewer,
            "call.html",
            path=request.path,
            page=shown,
            actions=[a for a in offered(self.actions, self.api) if a.when(call)],
            done=next((a.done for a in self.actions if a.name == done), SENT.get(done, "")),
            can_send=not call.done and hasattr(self.api, "send"),
        )

    async def held_by(self, call: Call) -> str:
        """The limit that holds ``call`` back, if it is due and limited: a read of the
        limited functions' use (``Store.limit_stats``), only for such a call."""
        now = self.api.clock()
        if not call.limits.limited or call.state is not State.READY or call.ready_at > now:
            return ""
        stats = {s.function: s for s in await self.api.store.limit_stats(now=now)}
        return holding(call.limits, stats.get(call.function))

    async def found(self, request: web.Request) -> Any:
        dispatch_id = request.match_info["dispatch_id"]
        call = await self.api.store.get(dispatch_id) if len(dispatch_id) <= 200 else None
        if call is None:
            raise NotFoundPage(f"No call has the dispatch id {dispatch_id[:200]!r}.")
        return call

    async def act(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        name = request.match_info["action"]
        action = next((a for a in offered(self.actions, self.api) if a.name == name), None)
        if action is None:
            raise NotFoundPage(f"No action {name[:40]!r} here.")
        call = await self.found(request)
        target = await action.run(self.api, call.dispatch_id) or call.dispatch_id
        query = urllib.parse.urlencode({"done": action.name})
        raise web.HTTPSeeOther(f"{call_url(target)}?{query}")

    async def send_message(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        """Send the form's message (``CallService.Send``) to the call, for a receive of
        its workflow: the value as JSON when it parses, else as a string."""
        from ...proto.dispatchlet.scheduler.v1 import calls_pb2

        call = await self.found(request)
        form = await request.post()
        topic = str(form.get("topic", ""))
        value = views.message_value(str(form.get("value", "")))
        message = calls_pb2.SendRequest(dispatch_id=call.dispatch_id, topic=topic, value=value)
        sent = await self.api.send(message)
        query = urllib.parse.urlencode({"done": "sent" if sent.delivered else "kept"})
        raise web.HTTPSeeOther(f"{call_url(call.dispatch_id)}?{query}")

    # --- the overview ------------------------------------------------------------------

    async def show_overview(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        shown = await self.overview(self.api)
        return self.render(
            viewer, "overview.html", path="/overview", sections=shown.sections, chart=shown.chart
        )

    # --- login and logout ------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self.viewer(request) is not None:
            raise web.HTTPSeeOther(local(request.query.get("next", "/")))
        return self.render(
            None, "login.html", next=local(request.query.get("next", "/")), problem=""
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        target = local(str(form.get("next", "/")))
        if self.api.insecure:
            raise web.HTTPSeeOther(target)
        if not same_origin(request):
            return self.error(None, 403, "Log in from the dashboard's own login page.")
        if not self.api.api_keys:
            problem = "The scheduler has no API key configured (DISPATCH_API_KEY)."
            return self.render(None, "login.html", 401, next=target, problem=problem)
        address = request.remote or ""
        now = self.api.clock()
        wait = self.failed_logins.wait(address, now)
        if wait > 0:
            problem = f"Too many wrong keys from this address: try again in {views.duration(wait)}."
            response = self.render(None, "login.html", 429, next=target, problem=problem)
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        key = session.key_matches(str(form.get("key", "")), self.api.api_keys)
        if key is None:
            self.failed_logins.failed(address, now)
            logger.warning("dashboard login with a wrong key from %s", address or "?")
            problem = "That is none of the scheduler's API keys."
            return self.render(None, "login.html", 401, next=target, problem=problem)
        self.failed_logins.succeeded(address)
        token, _ = session.issue(key, self.api.clock())
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            session.COOKIE,
            token,
            max_age=session.LIFETIME,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=served_over_https(request),
        )
        raise response

    async def logout(self, request: web.Request, viewer: Viewer) -> web.StreamResponse:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(session.COOKIE, path="/")
        raise response

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        data = self.assets.get(name)
        if data is None:
            raise web.HTTPNotFound()
        content_type = _TYPES[name[name.rindex(".") :]]
        response = web.Response(body=data, content_type=content_type, charset="utf-8")
        response.headers["Cache-Control"] = "public, max-age=86400"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


SENT = {
    "sent": "Message sent: a waiting receive got it.",
    "kept": "Message sent: kept until the workflow receives on its topic.",
}
"""What the call page says once a message was sent (``send_message``)."""


class Forbidden(InvalidArgument):
    http_status = 403
    code = "permission_denied"


class NotFoundPage(InvalidArgument):
    http_status = 404
    code = "not_found"


def call_url(dispatch_id: str) -> str:
    return f"/calls/{urllib.parse.quote(dispatch_id, safe='')}"


def local(target: str) -> str:
    """``target`` if it is a path of this address, else ``/``: never a redirect to
    another site (``//host`` and ``/\\host`` are other sites to a browser)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or len(target) > 2000:
        return "/"
    return target


def same_origin(request: web.Request) -> bool:
    """Whether the browser says the request comes from a page of this address: its
    ``Origin``, else its ``Referer``, names the host the request was sent to."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    return urllib.parse.urlsplit(source).netloc.lower() == request.host.lower()


def served_over_https(request: web.Request) -> bool:
    """Whether the browser reached the dashboard over https (directly, or through a
    proxy that says so): the session cookie is then sent over https only."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
