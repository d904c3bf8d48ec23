"""The review page's routes (FastAPI + Jinja2). ``create_app(cfg)`` builds it; ``inspector.web.serve`` runs it.

Pages render server-side; the browser script (static/app.js) swaps fragments (``/ui/...``) in place, so
filtering, paging, reviewing and the live view never reload the page. Every fragment has a JSON twin under
``/api/...`` for scripts with a bearer token.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, select, text

from inspector.config import StationConfig
from inspector.db.migrate import upgrade_database
from inspector.db.models import Camera, Frame
from inspector.db.session import make_engine, make_session_factory
from inspector.review import ACTIONS, ReviewError, record_review, review_states
from inspector.web import listing, trends
from inspector.web.auth import (CSRF_COOKIE, CSRF_HEADER, LOCAL, SESSION_COOKIE, Authenticator, LoginBusy,
                                Principal, csrf_matches)
from inspector.web.guards import GuardMiddleware, cross_site, same_origin
from inspector.web.images import CROP_KINDS, Encoded, ImageUnavailable, Renderer
from inspector.web.live import BusSource, LiveHub, PollSource, curve_client
from inspector.web.views import event_json, frame_view

HERE = Path(__file__).resolve().parent
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
FRAME_KINDS = ("image", "annotated", "thumb")
IMAGE_CACHE = "private, max-age=86400, immutable"  # a frame id's image never changes
KEEPALIVE_S = 15.0
FACETS_TTL_S = 30.0


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(max_length=16)
    detection_id: int | None = None
    class_name: str | None = Field(None, alias="class", max_length=128)
    box: list[float] | None = Field(None, min_length=4, max_length=4)
    comment: str | None = Field(None, max_length=2000)
    target_event_id: int | None = None


@dataclass
class Station:
    """What the routes share: the config, the database, auth, images, the live feed."""

    cfg: StationConfig
    engine: Engine
    auth: Authenticator
    renderer: Renderer
    hub: LiveHub
    live_mode: str

    def __post_init__(self) -> None:
        self.factory = make_session_factory(self.engine)
        self._facets: tuple[float, dict[str, list[str]]] | None = None

    def facets(self, db) -> dict[str, list[str]]:
        """The filter menus' values, re-read at most every FACETS_TTL_S (new positions/classes are rare)."""
        now = time.monotonic()
        if self._facets is None or now - self._facets[0] > FACETS_TTL_S:
            self._facets = (now, listing.facets(db))
        return self._facets[1]


def create_app(cfg: StationConfig, *, login_required: bool = False, engine: Engine | None = None) -> FastAPI:
    """The application over ``cfg``'s database. ``login_required``: set when bound beyond loopback."""
    web = cfg.web
    if engine is None:
        engine = make_engine(cfg.db_url)
        upgrade_database(engine)
        refresh_statistics(engine)
    auth = Authenticator(web, login_required)
    factory = make_session_factory(engine)
    live_mode = web.live if web.live != "auto" else "bus+poll"
    st = Station(cfg, engine, auth, Renderer(cfg, factory, web.render_workers), LiveHub(web.max_live_clients),
                 live_mode)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(station=cfg.station, actions=ACTIONS, urlencode=urlencode)
    templates.env.filters["ts"] = lambda value: listing.as_utc(value).strftime("%Y-%m-%d %H:%M:%S") if value else ""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        st.hub.attach(asyncio.get_running_loop())
        sources = []
        if "poll" in st.live_mode:
            sources.append(PollSource(st.factory, st.hub, web.poll_interval_s))
        if "bus" in st.live_mode:
            secure = curve_client(cfg.bus.curve.server_secret_key) if cfg.bus.curve.enabled else None
            sources.append(BusSource(cfg.bus.publish, cfg.station, st.hub, secure))
        for source in sources:
            source.start()
        try:
            yield
        finally:
            for source in sources:
                source.stop()

    app = FastAPI(title=f"rddn-inspector review: {cfg.station}", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.station = st
    hosts = None if auth.login_required and not web.allowed_hosts else LOOPBACK_HOSTS | set(web.allowed_hosts) | {web.host}
    app.add_middleware(GuardMiddleware, max_body_bytes=web.max_body_bytes, allowed_hosts=hosts)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- who is asking ---------------------------------------------------------------------------------------
    def principal(request: Request) -> Principal | None:
        authorization = request.headers.get("authorization")
        if authorization:
            found = st.auth.bearer(authorization)
            if found is None:
                raise HTTPException(401, "invalid bearer token")
            return found
        session = st.auth.session(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return session.principal
        return None if st.auth.login_required else LOCAL

    def viewer(request: Request) -> Principal:
        who = principal(request)
        if who is None:
            if request.method == "GET" and "text/html" in request.headers.get("accept", "") \
                    and not request.url.path.startswith(("/ui/", "/api/", "/img/", "/live")):
                raise HTTPException(303, headers={"Location": "/login?" + urlencode({"next": request.url.path})})
            raise HTTPException(401, "login required")
        return who

    def reviewer(request: Request, who: Principal = Depends(viewer)) -> Principal:
        if not who.can_review:
            raise HTTPException(403, f"user '{who.name}' has the viewer role; reviewing needs the reviewer role")
        check_csrf(request, who)
        return who

    def csrf_token(request: Request) -> str | None:
        session = st.auth.session(request.cookies.get(SESSION_COOKIE))
        return session.csrf if session is not None else request.cookies.get(CSRF_COOKIE)

    def check_csrf(request: Request, who: Principal, given: str | None = None) -> None:
        if who.via == "token":
            return  # a bearer header is never attached by a browser on its own
        if cross_site(request.headers.get("sec-fetch-site")) \
                or not same_origin(request.headers.get("origin"), request.headers.get("host")):
            raise HTTPException(403, "cross-site request refused")
        if not csrf_matches(csrf_token(request), given or request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong CSRF token (reload the page)")

    def page(request: Request, name: str, context: dict, who: Principal | None) -> HTMLResponse:
        token = csrf_token(request)
        fresh = token is None
        if fresh:
            token = secrets.token_urlsafe(32)
        response = templates.TemplateResponse(request, name, {**context, "who": who, "csrf": token,
                                                               "login_required": st.auth.login_required})
        if fresh:
            set_cookie(response, CSRF_COOKIE, token, None)
        response.headers["cache-control"] = "no-store"
        return response

    def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", path="/",
                            secure=web.cookie_secure or web.tls)

    def list_filter(request: Request) -> listing.ListFilter:
        q = request.query_params

        def text(name: str) -> str | None:
            value = q.get(name, "").strip()
            if len(value) > 128:
                raise HTTPException(400, f"{name}: longer than 128 characters")
            return value or None

        try:
            return listing.ListFilter(kind=text("kind") or "all", station=text("station"), camera=text("camera"),
                                      position=text("position"), cls=text("class"), severity=text("severity"),
                                      status=text("status"), review=text("review"), since=when(text("since")),
                                      until=when(text("until")))
        except listing.ListError as exc:
            raise HTTPException(400, str(exc)) from None

    def shell_context(db, f: listing.ListFilter) -> dict:
        return {"filter": f, "args": f.query_args(), "facets": st.facets(db), "counts": listing.counts(db, f),
                "drifted": trends.drifted_positions(db),
                "kinds": listing.KINDS, "severities": listing.SEVERITIES, "statuses": listing.STATUSES,
                "review_states": listing.FRAME_STATES}

    # -- pages -----------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, who: Principal = Depends(viewer), f: listing.ListFilter = Depends(list_filter)):
        selected = request.query_params.get("frame")
        with st.factory() as db:
            result = fetch_page(db, request, f)
            panel = None
            if selected and selected.isdigit():
                panel = frame_view(db, cfg, int(selected), st.facets(db)["classes"])
            context = {**shell_context(db, f), "page": result, "panel": panel}
            return page(request, "index.html", context, who)

    @app.get("/frames/{frame_id}", response_class=HTMLResponse)
    def frame_page(request: Request, frame_id: int, who: Principal = Depends(viewer),
                   f: listing.ListFilter = Depends(list_filter)):
        with st.factory() as db:
            panel = frame_view(db, cfg, frame_id, st.facets(db)["classes"])
            if panel is None:
                raise HTTPException(404, f"no frame {frame_id}")
            context = {**shell_context(db, f), "page": listing.page(db, f), "panel": panel}
            return page(request, "index.html", context, who)

    @app.get("/trends", response_class=HTMLResponse)
    def trends_page(request: Request, who: Principal = Depends(viewer),
                    f: listing.ListFilter = Depends(list_filter)):
        with st.factory() as db:
            context = {**shell_context(db, f), "hourly": trends.defects_per_hour(db, f),
                       "rates": trends.false_call_rate_per_day(db, f), "heat": trends.position_heatmap(db, f)}
            return page(request, "trends.html", context, who)

    # -- fragments and their JSON twins ---------------------------------------------------------------------
    @app.get("/ui/rows", response_class=HTMLResponse)
    def rows_fragment(request: Request, who: Principal = Depends(viewer),
                      f: listing.ListFilter = Depends(list_filter)):
        with st.factory() as db:
            result = fetch_page(db, request, f)
            counts = listing.counts(db, f)
        response = templates.TemplateResponse(request, "_rows.html", {"page": result, "args": f.query_args()})
        response.headers["x-next-cursor"] = result.next_cursor or ""
        response.headers["x-counts"] = json.dumps(counts)
        return response

    def fetch_page(db, request: Request, f: listing.ListFilter) -> listing.Page:
        q = request.query_params
        newer = q.get("newer_than")
        limit = q.get("limit", "50")
        if (newer is not None and not newer.isdigit()) or not limit.isdigit():
            raise HTTPException(400, "newer_than and limit are numbers")
        try:
            return listing.page(db, f, q.get("cursor") or None, int(limit), int(newer) if newer else None)
        except listing.ListError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/api/frames")
    def api_frames(request: Request, who: Principal = Depends(viewer), f: listing.ListFilter = Depends(list_filter)):
        with st.factory() as db:
            result = fetch_page(db, request, f)
            return {"frames": [row_json(r) for r in result.rows], "next_cursor": result.next_cursor}

    @app.get("/ui/frames/{frame_id}", response_class=HTMLResponse)
    def panel_fragment(request: Request, frame_id: int, who: Principal = Depends(viewer)):
        with st.factory() as db:
            panel = frame_view(db, cfg, frame_id, st.facets(db)["classes"])
            if panel is None:
                raise HTTPException(404, f"no frame {frame_id}")
            return templates.TemplateResponse(request, "_panel.html", {"panel": panel, "who": who})

    @app.get("/api/frames/{frame_id}")
    def api_frame(frame_id: int, who: Principal = Depends(viewer)):
        with st.factory() as db:
            panel = frame_view(db, cfg, frame_id, [])
            if panel is None:
                raise HTTPException(404, f"no frame {frame_id}")
            return panel.as_json()

    @app.post("/api/frames/{frame_id}/reviews")
    def post_review(request: Request, frame_id: int, body: ReviewRequest, who: Principal = Depends(reviewer)):
        with st.factory() as db:
            frame = db.get(Frame, frame_id)
            if frame is None:
                raise HTTPException(404, f"no frame {frame_id}")
            view = frame_view(db, cfg, frame_id, st.facets(db)["classes"])
            stored = frame.stored_path
        size = st.renderer.frame_size(stored) if body.action == "missed" else None
        try:
            with st.factory.begin() as db:
                event, state = record_review(db, frame_id, body.action, who.name, detection_id=body.detection_id,
                                             class_name=body.class_name, box=body.box, comment=body.comment,
                                             target_event_id=body.target_event_id, class_names=view.classes,
                                             image_size=size)
                result = event_json(event)
        except ReviewError as exc:
            raise HTTPException(422, str(exc)) from None
        with st.factory() as db:
            panel = frame_view(db, cfg, frame_id, st.facets(db)["classes"])
            row = listing.decorate(db, [db.get(Frame, frame_id)])[0]
            panel_html = templates.get_template("_panel.html").render(panel=panel, who=who)
            row_html = templates.get_template("_row.html").render(row=row, args={})
        return {"event": result, "state": state.state, "complete": state.complete, "panel": panel_html,
                "row": row_html}

    @app.post("/api/frames/{frame_id}/template")
    def use_as_template(frame_id: int, who: Principal = Depends(reviewer)):
        """The review page's "use this frame as template" (refused unless the frame is judged OK)."""
        from inspector.template_learning import use_frame_as_template
        from inspector.templates import TemplateError, TemplateStore

        with st.factory() as db:
            frame = db.get(Frame, frame_id)
            if frame is None:
                raise HTTPException(404, f"no frame {frame_id}")
            cameras = {c.name: c.id for c in db.scalars(select(Camera).where(Camera.station_id == cfg.station))}
            if frame.camera_id not in cameras.values():
                raise HTTPException(422, "templates of another station are changed on that station")
            try:
                st.renderer.files.resolve(frame.stored_path)  # the file is in this station's directories
            except ImageUnavailable as exc:
                raise HTTPException(exc.status, str(exc)) from None
        try:
            row = use_frame_as_template(TemplateStore(cfg, st.factory, cameras), frame_id, by=who.name)
        except TemplateError as exc:
            raise HTTPException(422, str(exc)) from None
        name = next(n for n, i in cameras.items() if i == row.camera_id)
        return {"template_id": row.id, "version": row.version, "camera": name, "position": row.position}

    @app.get("/export.csv")
    def export_csv(request: Request, who: Principal = Depends(viewer), f: listing.ListFilter = Depends(list_filter)):
        name = f"{cfg.station}-review-{datetime.now().strftime('%Y%m%d-%H%M')}.csv"
        return StreamingResponse(csv_rows(f), media_type="text/csv; charset=utf-8",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})

    def csv_rows(f: listing.ListFilter) -> Iterator[str]:
        """One keyset page per short read transaction (a long export never holds the database's snapshot)."""
        columns = ["frame_id", "processed_at", "station", "camera", "position", "serial", "frame", "status",
                   "severity", "review", "detection_id", "class", "score", "x1", "y1", "x2", "y2", "verdict",
                   "reviewed_class", "last_reviewer"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        cursor = None
        while True:
            with st.factory() as db:
                result = listing.page(db, f, cursor, listing.MAX_PAGE)
                yield _csv_batch(db, result.rows, writer, out)
            if result.next_cursor is None:
                return
            cursor = result.next_cursor

    def _csv_batch(db, batch: list[listing.ListRow], writer, out: io.StringIO) -> str:
        states = review_states(db, [r.frame for r in batch])
        for r in batch:
            fr, state = r.frame, states[r.frame.id]
            base = [fr.id, listing.as_utc(fr.processed_at).isoformat(), r.station, r.camera, fr.position, fr.serial,
                    fr.name, fr.status, r.severity or "", state.state]
            if not fr.detections:
                writer.writerow(base + [""] * 9 + [state.last_reviewer or ""])
            for det in sorted(fr.detections, key=lambda d: d.id):
                v = state.detections[det.id]
                writer.writerow(base + [det.id, det.class_name, round(det.score, 4), round(det.x1, 1),
                                        round(det.y1, 1), round(det.x2, 1), round(det.y2, 1), v.state,
                                        v.class_name if v.state == "wrong_class" else "", v.reviewer or ""])
            for box in state.missed:
                writer.writerow(base + ["", box.class_name, "", *[round(b, 1) for b in box.box], "missed",
                                        "", state.last_reviewer or ""])
        text_out = out.getvalue()
        out.seek(0)
        out.truncate()
        return text_out

    # -- live view -------------------------------------------------------------------------------------------
    @app.get("/live")
    async def live(request: Request, who: Principal = Depends(viewer)):
        queue = st.hub.subscribe()
        if queue is None:
            raise HTTPException(503, f"{st.hub.max_clients} live views are open already")

        async def stream():
            try:
                yield f"retry: 2000\nevent: hello\ndata: {json.dumps({'latest': st.hub.latest_id})}\n\n"
                while True:
                    try:
                        notice = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: frame\ndata: {json.dumps(notice)}\n\n"
            finally:
                st.hub.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    # -- images (by database id only) ------------------------------------------------------------------------
    def image_response(render) -> Response:
        try:
            encoded: Encoded = render()
        except ImageUnavailable as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return Response(encoded.data, media_type=encoded.media_type, headers={"cache-control": IMAGE_CACHE})

    @app.get("/img/frames/{frame_id}/{kind}")
    def frame_image(frame_id: int, kind: str, who: Principal = Depends(viewer)):
        if kind not in FRAME_KINDS:
            raise HTTPException(404, f"no image kind {kind!r}")
        return image_response(lambda: st.renderer.frame_image(frame_id, kind))

    @app.get("/img/detections/{detection_id}/{kind}")
    def detection_image(detection_id: int, kind: str, who: Principal = Depends(viewer)):
        if kind not in CROP_KINDS:
            raise HTTPException(404, f"no crop kind {kind!r}")
        return image_response(lambda: st.renderer.detection_crop(detection_id, kind))

    @app.get("/img/reviews/{event_id}/{kind}")
    def review_image(event_id: int, kind: str, who: Principal = Depends(viewer)):
        if kind not in CROP_KINDS:
            raise HTTPException(404, f"no crop kind {kind!r}")
        return image_response(lambda: st.renderer.review_crop(event_id, kind))

    # -- login -----------------------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page(request, "login.html", {"next": safe_next(request.query_params.get("next")), "error": None}, None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        check_csrf(request, Principal("", "", "session"), str(form.get("csrf", "")))
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:1024]
        try:
            found = await asyncio.to_thread(st.auth.login, name, password)
        except LoginBusy as exc:
            raise HTTPException(429, str(exc), headers={"retry-after": "5"}) from None
        target = safe_next(str(form.get("next", "/")))
        if found is None:
            response = page(request, "login.html", {"next": target, "error": "wrong name or password"}, None)
            response.status_code = 401
            return response
        sid, _session = found
        response = RedirectResponse(target, status_code=303)
        set_cookie(response, SESSION_COOKIE, sid, int(web.session_hours * 3600))
        return response

    @app.post("/logout")
    async def logout(request: Request, who: Principal = Depends(viewer)):
        form = await request.form()  # the header's form posts its CSRF token as a field
        check_csrf(request, who, str(form.get("csrf", "")) or None)
        st.auth.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login" if st.auth.login_required else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "station": cfg.station, "live_clients": st.hub.clients, "live": st.live_mode}

    return app


def refresh_statistics(engine: Engine) -> None:
    """SQLite: let the planner know the tables' sizes (``PRAGMA optimize`` with a bounded analysis, as SQLite
    recommends for long-lived connections), so it drives rare filters from the small child-table indexes."""
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL's autovacuum keeps its statistics
    with engine.begin() as conn:
        conn.execute(text("PRAGMA analysis_limit=1000"))
        conn.execute(text("PRAGMA optimize=0x10002"))


def when(value: str | None) -> datetime | None:
    """A filter time: ISO date/datetime (UTC if no zone) or an age such as 24h / 7d (as ``inspector history``)."""
    if value is None:
        return None
    import argparse

    from inspector.cli import parse_time

    try:
        return parse_time(value)
    except argparse.ArgumentTypeError as exc:
        raise HTTPException(400, str(exc)) from None


def safe_next(target: str | None) -> str:
    """Only a local path may follow a login (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def row_json(row: listing.ListRow) -> dict[str, object]:
    f = row.frame
    return {"id": f.id, "station": row.station, "camera": row.camera, "name": f.name, "position": f.position,
            "serial": f.serial, "status": f.status, "severity": row.severity, "review": row.review_state,
            "processed_at": listing.as_utc(f.processed_at).isoformat(),
            "detections": [{"id": d.id, "class": d.class_name, "score": round(d.score, 4)} for d in f.detections]}
