"""The FastAPI app of one search-stack service: `create_app(settings)` builds the app of the given role.

Owns the endpoints. Every role has `/healthz`, `/metrics`, `/docs`, `/admin/faults` (GET/PUT) and
`/admin/last-headers`; each adds its own work endpoint:

    master-search  POST /master-service/search  {text, n_results, random_seed} -> {doc_id: score}
                   POST /master-service/click   {doc_id, query_id?} -> {recorded, doc_id, query_id}
    ml-infer       POST /ml-infer/embed         {text} -> {model, dim, vector}
    ml-search      POST /ml-search/search       {text, k} -> {hits}  (embeds the query through ml-infer)
    keyword        POST /keyword/search         {text, k} -> {hits}  (BM25 on titles and keywords)
    text-search    POST /text-search/search     {text, k} -> {hits}  (BM25 on body text)

master-search asks ml-search, keyword and text-search concurrently and merges (see `ranking`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from searchstack import corpus
from searchstack.api import (
    ClickRequest,
    ClickResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorBody,
    Health,
    HitsResponse,
    SearchRequest,
    TextQuery,
)
from searchstack.downstream import (
    PROPAGATED_HEADERS,
    SOURCE_WORKLOAD_HEADER,
    DownstreamClient,
    DownstreamError,
)
from searchstack.faults import FaultInjector, Faults, InjectedFault
from searchstack.ranking import SOURCE_WEIGHTS, candidates_wanted, merge_scores
from searchstack.settings import Settings
from searchstack.telemetry import ServiceMetrics, TelemetryMiddleware

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (500, "This service or a service behind it failed (injected or real); `service` names it."),
        (502, "A downstream service answered something unusable."),
        (503, "A downstream service could not be reached."),
        (504, "A downstream service timed out."),
    )
}


class ServiceContext:
    """Everything a request handler of this app needs, created once per app."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(settings)
        self.injector = FaultInjector(
            settings.faults,
            settings.work_ms,
            on_inject=lambda kind: self.metrics.faults_injected.labels(
                role=settings.role, version=settings.version, kind=kind
            ).inc(),
        )
        self.downstream = DownstreamClient(settings, self.metrics, transport)
        self.last_headers: dict[str, str] = {}

    async def begin(self, request: Request) -> None:
        """Start a work request: remember its mesh headers, then apply simulated work and faults."""
        names = (self.settings.lane_header, *PROPAGATED_HEADERS, SOURCE_WORKLOAD_HEADER, "host")
        self.last_headers = {n: request.headers[n] for n in names if n in request.headers}
        await self.injector.apply()

    async def call(
        self, service: str, path: str, payload: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        return await self.downstream.post(service, path, payload, request.headers, request.scope["state"])


def create_app(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The app of `settings.role`. `transport` replaces the network for downstream calls (tests)."""
    ctx = ServiceContext(settings, transport)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await ctx.downstream.aclose()

    app = FastAPI(
        title=f"searchstack {settings.role}",
        version=settings.version,
        description=f"The {settings.role} service of the reference search stack ({settings.workload}).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    routers = [_common_routes(ctx), ROLE_ROUTES[settings.role](ctx)]
    for router in routers:
        app.include_router(router)
    _add_exception_handlers(app, settings)
    paths = {route.path for router in routers for route in router.routes if isinstance(route, APIRoute)}
    app.add_middleware(TelemetryMiddleware, settings=settings, metrics=ctx.metrics, paths=paths)
    return app


def _common_routes(ctx: ServiceContext) -> APIRouter:
    router = APIRouter()
    s = ctx.settings

    @router.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return Health(status="ok", role=s.role, version=s.version, workload=s.workload)

    @router.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/admin/faults", response_model=Faults, tags=["admin"])
    async def get_faults() -> Faults:
        return ctx.injector.faults

    @router.put("/admin/faults", response_model=Faults, tags=["admin"])
    async def put_faults(faults: Faults) -> Faults:
        """Replace the fault knobs of this process (fields left out reset to "no fault")."""
        ctx.injector.faults = faults
        return faults

    @router.get("/admin/last-headers", tags=["admin"])
    async def last_headers() -> dict[str, dict[str, str]]:
        """The mesh headers (lane, trace, user, source workload, host) of the last work request."""
        return {"headers": ctx.last_headers}

    return router


QUERY_ID_HEADER = "x-query-id"


def has_cookie(header: str | None, name: str) -> bool:
    """Whether a `cookie` request header carries a cookie called `name` (with any value)."""
    return header is not None and any(part.strip().partition("=")[0] == name for part in header.split(";"))
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No document has this `doc_id`; the click is not counted."}
}


def _master_routes(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["search"])
    ctx.metrics.start_business_series()
    known_docs = frozenset(corpus.CORPUS.doc_ids)
    user_header = ctx.settings.user_header  # whose impression or click it is (per-user sums, see telemetry)

    @router.post("/master-service/search", response_model=dict[str, float], responses=ERROR_RESPONSES)
    async def search(body: SearchRequest, request: Request) -> JSONResponse:
        """Search the corpus: `{doc_id: score}` with exactly `n_results` entries, best first."""
        if not has_cookie(request.headers.get("cookie"), ctx.settings.assignment_cookie):
            ctx.metrics.count_assignment()
        await ctx.begin(request)
        query = {"text": body.text, "k": candidates_wanted(body.n_results)}
        sources = list(SOURCE_WEIGHTS)
        answers = await asyncio.gather(
            *(ctx.call(s, f"/{s}/search", query, request) for s in sources), return_exceptions=True
        )
        for answer in answers:  # the first failure in source order, so the error is deterministic
            if isinstance(answer, BaseException):
                raise answer
        hits = {s: _hits(s, a) for s, a in zip(sources, answers, strict=True) if isinstance(a, dict)}
        ranked = merge_scores(hits, body.text, body.n_results, body.random_seed)
        ctx.metrics.count_impression(request.headers.get(user_header))
        # The body keeps the seed's exact {doc_id: score} shape; the id a click refers to goes in a header.
        return JSONResponse(ranked, headers={QUERY_ID_HEADER: uuid.uuid4().hex})

    @router.post("/master-service/click", response_model=ClickResponse, responses=NOT_FOUND)
    async def click(body: ClickRequest, request: Request) -> JSONResponse:
        """Record that a user clicked `doc_id` in a search's answer (counted per version of this service)."""
        if body.doc_id not in known_docs:
            return JSONResponse({"error": f"unknown doc_id {body.doc_id!r}", "service": ctx.settings.role}, 404)
        ctx.metrics.count_click(body.value, request.headers.get(user_header))
        return JSONResponse({"recorded": True, "doc_id": body.doc_id, "query_id": body.query_id})

    return router


def _ml_infer_routes(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["ml"])

    @router.post("/ml-infer/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES)
    async def embed(body: EmbedRequest, request: Request) -> JSONResponse:
        """The query embedding (hashed bag of words, L2-normalized)."""
        await ctx.begin(request)
        vector = corpus.embed(body.text)
        return JSONResponse({"model": corpus.MODEL_NAME, "dim": len(vector), "vector": vector.tolist()})

    return router


def _ml_search_routes(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(tags=["search"])

    @router.post("/ml-search/search", response_model=HitsResponse, responses=ERROR_RESPONSES)
    async def search(body: TextQuery, request: Request) -> JSONResponse:
        """Top-k documents by cosine similarity to the query embedding from ml-infer."""
        await ctx.begin(request)
        answer = await ctx.call("ml-infer", "/ml-infer/embed", {"text": body.text}, request)
        vector = answer.get("vector")
        if not isinstance(vector, list) or len(vector) != corpus.EMBEDDING_DIM:
            raise DownstreamError("ml-infer", 502, f"answered no {corpus.EMBEDDING_DIM}-dim vector")
        scores = ctx.injector.rank(corpus.DOC_EMBEDDINGS @ np.asarray(vector, dtype=np.float32), body.text)
        return _hits_response(corpus.top_k(scores, body.k))

    return router


def _bm25_routes(ctx: ServiceContext, path: str, index: corpus.Bm25Index, doc: str) -> APIRouter:
    router = APIRouter(tags=["search"])

    async def search(body: TextQuery, request: Request) -> JSONResponse:
        await ctx.begin(request)
        scores = ctx.injector.rank(index.scores(corpus.word_ids(body.text)), body.text)
        return _hits_response(corpus.top_k(scores, body.k))

    search.__doc__ = doc
    router.add_api_route(
        path, search, methods=["POST"], response_model=HitsResponse, responses=ERROR_RESPONSES
    )
    return router


def _keyword_routes(ctx: ServiceContext) -> APIRouter:
    doc = "Top-k documents by BM25 on titles and keywords."
    return _bm25_routes(ctx, "/keyword/search", corpus.KEYWORD_INDEX, doc)


def _text_search_routes(ctx: ServiceContext) -> APIRouter:
    doc = "Top-k documents by BM25 on body text."
    return _bm25_routes(ctx, "/text-search/search", corpus.TEXT_INDEX, doc)


ROLE_ROUTES = {
    "master-search": _master_routes,
    "ml-infer": _ml_infer_routes,
    "ml-search": _ml_search_routes,
    "keyword": _keyword_routes,
    "text-search": _text_search_routes,
}


def _hits_response(ranked: list[tuple[int, float]]) -> JSONResponse:
    return JSONResponse({"hits": {corpus.CORPUS.doc_ids[i]: score for i, score in ranked}})


def _hits(service: str, answer: dict[str, Any]) -> dict[str, float]:
    hits = answer.get("hits")
    if not isinstance(hits, dict) or not all(isinstance(v, int | float) for v in hits.values()):
        raise DownstreamError(service, 502, "answered no {doc_id: score} hits")
    return {str(k): float(v) for k, v in hits.items()}


def _add_exception_handlers(app: FastAPI, settings: Settings) -> None:
    async def injected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc), "service": settings.role}, status_code=500)

    async def downstream(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DownstreamError)
        return JSONResponse(exc.body(via=settings.role), status_code=exc.status)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        summary = "; ".join(f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
        return JSONResponse(
            {"error": f"invalid request: {summary}", "detail": jsonable_encoder(errors)}, status_code=422
        )

    app.add_exception_handler(InjectedFault, injected)
    app.add_exception_handler(DownstreamError, downstream)
    app.add_exception_handler(RequestValidationError, invalid)


def _location(loc: Any) -> str:
    """`("body", "n_results")` -> `n_results`: where in the request the problem is."""
    return ".".join(str(p) for p in loc if p != "body") or "body"
