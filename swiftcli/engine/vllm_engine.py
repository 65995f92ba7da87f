"""The vLLM engine: our requests on vLLM's async engine (`AsyncLLM`), for batches, streams and servers alike.

vLLM's async engine belongs to the event loop it runs on, so it gets a private loop in a daemon thread. Sync
callers (the REPL, dataset runs, the seed API) and async callers on any other loop (the deploy server) hand
their work to that loop; cancelling or closing on the caller's side cancels the vLLM request, which aborts it.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import logging
import os
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

from ..log import elapsed_progress, vllm_log_level

# Before vLLM configures its logging: stdout carries the REPL's answers, and vLLM's INFO lines drown them.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", vllm_log_level())

import vllm
from vllm import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from ..arguments import EngineSetup
from ..checkpoint import adapter_rank, check_adapter_dir
from ..errors import ArgumentError
from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, Usage
from ..registry import ModelMeta
from ..template import Template
from .base import EngineInfo, InferEngine, new_event_loop
from .vllm_config import (check_lora_rank, cpu_compile_cache, cpu_eager_dtype, cpu_kv_cache, engine_args,
                          lora_requests, parse_engine_kwargs, sampling_params, supported_architectures)
from .vllm_process import SHUTDOWN_TIMEOUT_S, StderrFilter, engine_processes
from .vllm_requests import AdapterGate, End, Job, cancel_other_tasks, pump, to_logprobs, to_prompt_logprobs

__all__ = ["AdapterGate", "VllmEngine", "supported_architectures", "vllm"]  # what engine/__init__ and tests import
logger = logging.getLogger("swiftcli")
T = TypeVar("T")


def run_mode(compiled: bool) -> str:
    """The banner's word on how vLLM runs and what the other choice gives (measured on CPU: README, Performance)."""
    if not current_platform.is_cpu():
        return "compiled, CUDA graphs" if compiled else "eager (--enforce_eager false: compiled, CUDA graphs)"
    if compiled:
        return "compiled (--enforce_eager true: starts in ~40 s instead of ~1-2 min, decodes ~1.5x slower)"
    return "eager (--enforce_eager false: ~1.5x faster decoding, compiling 1-2 min on the first start)"


class VllmEngine(InferEngine):
    def __init__(self, vllm_config: Any, template: Template, info: EngineInfo, default_config: RequestConfig,
                 loras: dict[str, LoRARequest], stderr: StderrFilter | None = None):
        self.template, self.info, self.default_config = template, info, default_config
        self._stderr = stderr
        self.loras = loras
        self.lora_enabled = vllm_config.lora_config is not None
        self.max_lora_rank = vllm_config.lora_config.max_lora_rank if self.lora_enabled else 0
        self._gate = AdapterGate() if self.lora_enabled and current_platform.is_cpu() else None
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        self.engine: AsyncLLM | None = self._call(self._start(vllm_config))
        atexit.register(self.close)

    @classmethod
    def from_arguments(cls, args: EngineSetup, meta: ModelMeta, template: Template, info: EngineInfo,
                       default_config: RequestConfig) -> VllmEngine:
        """Check everything that can be wrong with the arguments, then start vLLM (~30 s on CPU)."""
        enable_lora = args.vllm_enable_lora or bool(info.adapters)
        if info.adapters and not args.vllm_enable_lora:
            logger.info("Serving LoRA adapters on vLLM (enable_lora) for: %s", ", ".join(info.adapters))
        loras = lora_requests(info.adapters, args.vllm_max_lora_rank) if enable_lora else {}
        extra = parse_engine_kwargs(args.vllm_engine_kwargs)
        kv_cache = cpu_kv_cache(extra)
        cpu_compile_cache()
        cpu_eager_dtype(args, info, extra)
        if kv_cache:
            info.details["kv cache"] = kv_cache
        with engine_processes() as stderr:  # vLLM logs from here on: its noise is filtered
            try:
                vllm_config = engine_args(args, meta, info, enable_lora, extra).create_engine_config()
            except (TypeError, ValueError) as e:  # vLLM's validation (pydantic's ValidationError is a ValueError)
                raise ArgumentError(f"vLLM rejects the engine arguments: {' '.join(str(e).split())}") from None
            compiled = not vllm_config.model_config.enforce_eager
            info.details["mode"] = run_mode(compiled)
            logger.info("Starting vLLM %s (%s)...", vllm.__version__, info.model_dir)
            with elapsed_progress("vLLM is starting" + (": compiling the model (the first start takes longest; vLLM "
                                                        "caches it)" if compiled else "")):
                return cls(vllm_config, template, info, default_config, loras, stderr)

    async def _start(self, vllm_config: Any) -> AsyncLLM:
        """Made on the engine's loop, so its output handler runs there."""
        return AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=True)

    def close(self) -> None:
        """Stop vLLM's engine processes, waiting until they have exited, and the loop thread (also at interpreter
        exit)."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        atexit.unregister(self.close)
        self._call(self._shutdown(engine))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        if self._stderr is not None:  # the processes' last lines
            self._stderr.wait(5)

    @staticmethod
    async def _shutdown(engine: AsyncLLM) -> None:
        """On the engine's loop, so its tasks end there; the output handler goes first (else it reports the
        engine process dead, as an error). vLLM's own 5 s for its processes to exit is too short on a busy CPU."""
        await cancel_other_tasks()
        engine.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        await cancel_other_tasks()

    # ---- LoRA ------------------------------------------------------------------------------------------------
    def add_lora(self, request: LoRARequest) -> str:
        """Serve one more adapter by its name (the seed API passes LoRARequests per call); returns the name."""
        name, path = request.lora_name, request.lora_path
        if not self.lora_enabled:
            raise ArgumentError("this vLLM engine was started without LoRA: pass enable_lora=True "
                                "(--vllm_enable_lora true)")
        if name in self.loras and self.loras[name].lora_path != path:
            raise ArgumentError(f"LoRA name {name!r} is already used for {self.loras[name].lora_path}")
        if name not in self.loras:
            check_adapter_dir(name, path)
            check_lora_rank(name, adapter_rank(path), self.max_lora_rank)
            self.loras[name] = LoRARequest(name, len(self.loras) + 1, path)  # our ids: unique per adapter
            self.info.adapters[name] = path
        return name

    # ---- the engine interface --------------------------------------------------------------------------------
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None) -> list[InferResponse]:
        jobs = [self._job(r, config, stream=False) for r in requests]
        return self._call(self._infer_all(jobs))

    def infer_stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[StreamDelta]:
        return self._iterate(self._deltas(self._job(request, config, stream=True)))

    async def infer_async(self, request: InferRequest, config: RequestConfig | None = None) -> InferResponse:
        job = self._job(request, config, stream=False)
        if self._on_engine_loop():
            return await self._final(job)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._final(job), self._loop))

    def infer_stream_async(self, request: InferRequest,
                           config: RequestConfig | None = None) -> AsyncIterator[StreamDelta]:
        deltas = self._deltas(self._job(request, config, stream=True))
        return deltas if self._on_engine_loop() else self._aiterate(deltas)

    def serve(self, server: Coroutine[Any, Any, None]) -> None:
        """Run a server's coroutine on the engine's own loop, as vLLM's API server does: its requests then reach
        vLLM with no hop between threads and loops per request and per token. Blocks until the server returns."""
        self._call(server)

    def infer_stream_batch(self, requests: list[InferRequest],
                           config: RequestConfig | None = None) -> Iterator[tuple[int, StreamDelta]]:
        """Several requests streamed at once: (request index, delta) as deltas arrive (the seed's stream API)."""
        return self._iterate(self._merged([self._job(r, config, stream=True) for r in requests]))

    def with_template(self, template: Template) -> VllmEngine:
        """The same running engine, encoding with another template (the seed API's callers bring their own)."""
        view = copy.copy(self)
        view.template = template
        return view

    # ---- requests -> vLLM -> responses (these run on the engine's loop) -----------------------------------
    def _job(self, request: InferRequest, config: RequestConfig | None, stream: bool) -> Job:
        prompt_ids = self.encode(request).input_ids
        config = self.resolve_config(config, len(prompt_ids))
        return Job(prompt_ids, sampling_params(config, self.template, stream), self.loras.get(request.adapter))

    async def _generate(self, job: Job) -> AsyncIterator[RequestOutput]:
        if self.engine is None:
            raise RuntimeError("the vLLM engine is closed")
        (prompt,) = self.engine.renderer.render_cmpl([TokensPrompt(prompt_token_ids=job.prompt_ids)])
        turn = self._gate.turn(job.lora and job.lora.lora_name) if self._gate else contextlib.nullcontext()
        async with turn:
            async for output in self.engine.generate(prompt, job.params, f"swift-{uuid.uuid4().hex}",
                                                     lora_request=job.lora):
                yield output

    async def _final(self, job: Job) -> InferResponse:
        async for output in self._generate(job):  # FINAL_ONLY: one output
            pass
        choices = [Choice(c.index, c.text, c.finish_reason, list(c.token_ids), to_logprobs(c, job))
                   for c in sorted(output.outputs, key=lambda c: c.index)]
        usage = Usage(len(job.prompt_ids), sum(len(c.token_ids) for c in output.outputs),
                      output.num_cached_tokens or 0)
        return InferResponse(choices, usage, to_prompt_logprobs(output, job))

    async def _infer_all(self, jobs: list[Job]) -> list[InferResponse]:
        tasks = [asyncio.ensure_future(self._final(job)) for job in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # a failure or a cancel ends the whole batch
                task.cancel()

    async def _deltas(self, job: Job) -> AsyncIterator[StreamDelta]:
        tokens: dict[int, int] = {}  # per choice, so far
        cached_tokens = 0
        async for output in self._generate(job):
            prompt_logprobs = to_prompt_logprobs(output, job)  # on the first output only
            cached_tokens = output.num_cached_tokens or cached_tokens
            for c in output.outputs:
                tokens[c.index] = tokens.get(c.index, 0) + len(c.token_ids)
                if c.token_ids or c.finish_reason or prompt_logprobs:  # a token with no text yet is a step too
                    yield StreamDelta(c.index, c.text, c.finish_reason, to_logprobs(c, job),
                                      prompt_logprobs=prompt_logprobs, completion_tokens=tokens[c.index])
                    prompt_logprobs = None
        yield StreamDelta(0, "", None, usage=Usage(len(job.prompt_ids), sum(tokens.values()), cached_tokens))

    async def _merged(self, jobs: list[Job]) -> AsyncIterator[tuple[int, StreamDelta]]:
        """Several jobs' deltas as (job index, delta) in arrival order; the first error ends them all."""
        arrived: asyncio.Queue = asyncio.Queue()

        async def stream(i: int, job: Job) -> None:
            async for delta in self._deltas(job):
                arrived.put_nowait((i, delta))

        tasks = [asyncio.ensure_future(stream(i, job)) for i, job in enumerate(jobs)]
        everything = asyncio.gather(*tasks)
        everything.add_done_callback(lambda _: arrived.put_nowait(None))
        try:
            while (item := await arrived.get()) is not None:
                yield item
            await everything
        finally:
            for task in tasks:
                task.cancel()

    # ---- bridging callers' threads and loops to the engine's loop -------------------------------------------
    def _on_engine_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _call(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on the engine's loop and wait for it; an interrupt cancels it (vLLM aborts)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        finally:
            future.cancel()

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator of the engine's loop as a sync one; closing it cancels the work."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        future = asyncio.run_coroutine_threadsafe(pump(items, q.put), self._loop)
        try:
            while not isinstance(item := q.get(), End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            future.cancel()

    async def _aiterate(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """An async iterator of the engine's loop for a caller on another loop; closing it cancels the work."""
        caller = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def put(item: T | End) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop closed: our cancel is on its way
                caller.call_soon_threadsafe(q.put_nowait, item)

        future = asyncio.run_coroutine_threadsafe(pump(items, put), self._loop)
        try:
            while not isinstance(item := await q.get(), End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            future.cancel()
