"""`create_app(engine, args)`: the FastAPI app of `swift deploy`. Routes are thin; serving.py does the work.

Every error leaves as OpenAI's `{"error": {"message", "type", "param", "code"}}`, FastAPI's own ones included.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..arguments import DeployArguments
from ..engine import InferEngine
from ..errors import SwiftError
from .metrics import ServerMetrics, log_throughput
from .openai_protocol import ChatCompletionRequest, CompletionRequest
from .formats import APIError, to_api_error
from .serving import OpenAIServing

logger = logging.getLogger("swiftcli")


def create_app(engine: InferEngine, args: DeployArguments) -> FastAPI:
    metrics = ServerMetrics()
    serving = OpenAIServing(engine, metrics, args.served_model_name, args.owned_by, args.max_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ticker = asyncio.create_task(log_throughput(metrics, args.log_interval)) if args.log_interval > 0 else None
        log_startup(args, serving)
        yield
        if ticker is not None:
            ticker.cancel()

    app = FastAPI(title="swift deploy", version=__version__, lifespan=lifespan)
    app.state.serving = serving
    add_error_handlers(app, serving)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(api_key_check(args.api_key))] if args.api_key else [])

    @v1.get("/models")
    async def list_models() -> Response:
        return Response(serving.models().model_dump_json(), media_type="application/json")

    @v1.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        return Response(serving.model(model_id).model_dump_json(), media_type="application/json")

    @v1.post("/chat/completions")
    @with_cancellation
    async def chat_completions(body: ChatCompletionRequest, raw_request: Request) -> Response:
        return await serving.chat(body)

    @v1.post("/completions")
    @with_cancellation
    async def completions(body: CompletionRequest, raw_request: Request) -> Response:
        return await serving.completion(body)

    app.include_router(v1)

    @app.get("/health")
    async def health() -> Response:
        """200 once the app answers: the engine is loaded before the server starts listening."""
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__, "backend": engine.info.backend}

    return app


def api_key_check(api_key: str) -> Callable[..., Awaitable[None]]:
    """A dependency for the /v1 routes: `Authorization: Bearer <api_key>` or 401 (health and metrics stay open)."""
    bearer = HTTPBearer(auto_error=False)

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if credentials is None:
            raise APIError(401, "Missing API key: send the header `Authorization: Bearer <key>`.",
                           code="invalid_api_key")
        if not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check


def with_cancellation(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Race the handler against the client's disconnect and cancel the loser (vLLM's pattern): a gone client's
    generation is aborted. Streams need it only until their response starts; Starlette watches them after that."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        work = asyncio.create_task(handler(*args, **kwargs))
        gone = asyncio.create_task(wait_for_disconnect(kwargs["raw_request"]))
        try:
            await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                with suppress(asyncio.CancelledError):
                    await work
        return work.result() if not work.cancelled() else Response(status_code=499)

    return wrapper


async def wait_for_disconnect(request: Request) -> None:
    """The body has been read already, so the next ASGI message can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def add_error_handlers(app: FastAPI, serving: OpenAIServing) -> None:
    def reply(request: Request, err: APIError) -> JSONResponse:
        if not err.recorded:
            route = request.scope.get("route")
            serving.record_rejected(getattr(route, "path", None), request.url.path, err)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return reply(request, exc)

    @app.exception_handler(SwiftError)
    async def swift_error(request: Request, exc: SwiftError) -> JSONResponse:
        return reply(request, to_api_error(exc, request.url.path))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return reply(request, from_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return reply(request, APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s: unexpected error", request.url.path, exc_info=exc)
        return reply(request, APIError(500, f"Internal server error: {type(exc).__name__}: {exc}"))


def from_validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 becomes a 400 whose message names each bad field; `param` is the first top-level one.
    Fields we do not know are refused in OpenAI's words (never silently ignored)."""
    errors = exc.errors()
    unknown = [".".join(str(p) for p in e["loc"][1:]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return APIError(400, f"Unrecognized request argument supplied: {', '.join(unknown)} (swift deploy does not "
                             f"implement it)", param=unknown[0])
    if any(e["type"] == "json_invalid" for e in errors):
        return APIError(400, f"The body is not valid JSON: {errors[0].get('ctx', {}).get('error', errors[0]['msg'])}")
    if [e["loc"] for e in errors] == [("body",)]:
        return APIError(400, f"The body must be a JSON object sent as Content-Type: application/json "
                             f"({errors[0]['msg']})")
    paths = [".".join(str(p) for p in e["loc"] if p != "body") for e in errors]
    message = "; ".join(f"{path or 'body'}: {e['msg']}" for path, e in zip(paths, errors))
    fields = [e["loc"][1] for e in errors if len(e["loc"]) > 1 and e["loc"][0] == "body"]
    return APIError(400, f"{len(errors)} validation error(s): {message}", param=str(fields[0]) if fields else None)


def log_startup(args: DeployArguments, serving: OpenAIServing) -> None:
    """The URL and a curl to paste, for the served model's kind (chat or completions)."""
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if args.ssl_certfile else "http"
    url = f"{scheme}://{host}:{args.port}/v1"
    model = serving.base_model
    adapters = f" and LoRA {', '.join(serving.engine.info.adapters)}" if serving.engine.info.adapters else ""
    if serving.engine.template.is_generation:
        endpoint, payload = "completions", '"prompt": "Hello, my name is"'
    else:
        endpoint, payload = "chat/completions", '"messages": [{"role": "user", "content": "Hello!"}]'
    auth = ' -H "Authorization: Bearer $API_KEY"' if args.api_key else ""
    logger.info("Serving %s%s at %s (OpenAI API; also /health, /metrics, /version)", model, adapters, url)
    logger.info("Try: curl %s/%s -H \"Content-Type: application/json\"%s -d '{\"model\": \"%s\", %s, "
                "\"max_tokens\": 64}'", url, endpoint, auth, model, payload)
