"""The transformers + peft engine: continuous batching over a KV cache, in our own decode loop.

One scheduler thread owns the model. Requests join the running batch between decode steps (their prompts are
prefilled, and their KV cache is left-padded and stacked onto the batch's) and leave it as soon as they finish,
so a short request never waits for the longest one. Owning the loop (instead of `model.generate`) also gives
per-request sampling settings in one batch and per-request LoRA adapters (peft's `adapter_names`).

On CUDA (no LoRA adapters, a supported architecture) the running rows decode from a static KV cache instead, one
slot per row, in steps replayed from CUDA graphs (static_decode.py): their prefill stays the eager one above and its
cache is copied into the rows' slots. When every row is greedy (no penalties, no logprobs) up to `decode_steps`
tokens are decoded on the device before the host looks at them (rows that stop early drop the extra ones), and
the next window is queued before the host reports this one (`_ahead`), so the GPU does not wait on the host.

Here: the public engine and the one request loop every method wraps (`_generate`); pt_scheduler.py: the thread and
its steps; pt_batch.py: the rows and the batch's KV cache.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, TypeVar

import torch

from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, TokenLogprob, Usage
from ..template import Template
from .base import EngineInfo, InferEngine
from .pt_batch import Row, new_row
from .pt_scheduler import Scheduler
from .static_decode import StaticDecoder, unsupported_reason
from .tensor_parallel import TpGroup

logger = logging.getLogger("swiftcli")
T = TypeVar("T")


class PtEngine(InferEngine):
    """The engine interface over one Scheduler: a request becomes n rows, their events become deltas and responses."""

    def __init__(self, model: Any, template: Template, info: EngineInfo, default_config: RequestConfig,
                 max_batch_size: int = 16, static_decode: bool | None = None, compile: bool | None = None,
                 decode_steps: int = 8, tp: TpGroup | None = None):
        """static_decode: decode from a static KV cache (CUDA graphs on GPU); default: on CUDA, when it can.
        compile: torch.compile that decode step before capturing it (`--torch_compile`; default: on CUDA; the first
        request then waits for the compilation). decode_steps: most greedy tokens per sync. tp: this process's place in
        a tensor-parallel group (tensor_parallel.py): rank 0 steers, the others `follow`."""
        self.model, self.template, self.info = model, template, info
        self.tokenizer = template.tokenizer
        self.default_config = default_config
        self.tp = tp
        if info.adapters:
            self.model = _attach_adapters(model, info.adapters)
        static = _static_decoder(model, info, tp, static_decode, compile)
        self.info.details["decode"] = "eager" if static is None else "static KV cache" + (
            ", CUDA graphs" if static.cuda_graphs else "") + (", torch.compile" if static.compiled else "")
        self.scheduler = Scheduler(self.model, template, info, static, max_batch_size, decode_steps, tp)

    @property
    def static(self) -> StaticDecoder | None:
        """The static-KV-cache decoder; None when decoding eagerly."""
        return self.scheduler.static

    @property
    def decode_steps(self) -> int:
        return self.scheduler.decode_steps

    @decode_steps.setter
    def decode_steps(self, steps: int) -> None:  # benchmarks compare 1 token per sync with a window
        self.scheduler.decode_steps = steps

    @property
    def device(self) -> torch.device:
        return self.scheduler.device

    @property
    def max_batch_size(self) -> int:
        return self.scheduler.max_batch_size

    # ---- public API ------------------------------------------------------------------------------------------
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None) -> list[InferResponse]:
        events = _BlockingQueue()
        groups = [self._make_rows(i, r, config, events) for i, r in enumerate(requests)]
        for _ in _run_blocking(self._generate(groups, events)):
            pass
        return [self._response(rows) for rows in groups]

    def infer_stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[StreamDelta]:
        events = _BlockingQueue()
        yield from _run_blocking(self._generate([self._make_rows(0, request, config, events)], events))

    async def infer_async(self, request: InferRequest, config: RequestConfig | None = None) -> InferResponse:
        """Native async: cancelling the awaiting task (a client that left) aborts the rows at the next step."""
        events = _LoopQueue()
        rows = self._make_rows(0, request, config, events)
        async for _ in self._generate([rows], events):  # (a cancel ends inside it: it aborts the rows itself)
            pass
        return self._response(rows)

    async def infer_stream_async(self, request: InferRequest,
                                 config: RequestConfig | None = None) -> AsyncIterator[StreamDelta]:
        events = _LoopQueue()
        rows = self._make_rows(0, request, config, events)
        async with contextlib.aclosing(self._generate([rows], events)) as deltas:  # closing this closes that now
            async for delta in deltas:
                yield delta

    def follow(self) -> None:
        """Tensor-parallel ranks 1..N-1: run the steps rank 0 announces, on this rank's shard, until it says stop."""
        self.scheduler.follow()

    def close(self) -> None:
        """Stop the scheduler thread after its current step (tensor parallel, rank 0: the followers too)."""
        self.scheduler.close()

    # ---- requests <-> rows -----------------------------------------------------------------------------------
    def _make_rows(self, index: int, request: InferRequest, config: RequestConfig | None,
                   events: _Events) -> list[Row]:
        """Request `index` as config.n rows reporting to `events`."""
        prompt_ids = self.encode(request).input_ids
        config = self.resolve_config(config, len(prompt_ids))
        if self.tp is not None and config.seed is None:  # every rank must draw the same tokens
            config = config.replace(seed=random.getrandbits(31))
        return [new_row(self.template, (index, k, prompt_ids, config, request.adapter), events)
                for k in range(config.n)]

    async def _generate(self, groups: list[list[Row]], events: _Events) -> AsyncGenerator[StreamDelta, None]:
        """The one request loop under every public method: submit each request's rows (group i is request i), turn
        the scheduler's events into deltas (a request's prompt logprobs ride on its first one) and end each request
        with a usage delta. However it ends (done, closed, cancelled, Ctrl-C), unfinished rows are aborted."""
        for rows in groups:
            self.scheduler.submit(rows)
        pending = [len(rows) for rows in groups]
        prompt_logprobs = [rows[0].config.prompt_logprobs is not None for rows in groups]
        try:
            while any(pending):
                row, delta, finish_reason, logprob = _unpack(await events.get())
                i = row.request_index
                yield StreamDelta(row.choice_index, delta, finish_reason, [logprob] if logprob else None,
                                  prompt_logprobs=groups[i][0].prompt_logprobs if prompt_logprobs[i] else None,
                                  completion_tokens=len(row.output_ids))
                prompt_logprobs[i] = False
                pending[i] -= finish_reason is not None
                if finish_reason is not None and not pending[i]:
                    yield StreamDelta(0, "", None, usage=self._response(groups[i]).usage)
        finally:  # the consumer went away (closed iterator, cancelled task, Ctrl-C): stop generating for it
            for rows in groups:
                for row in rows:
                    row.aborted = row.finish_reason is None

    @staticmethod
    def _response(rows: list[Row]) -> InferResponse:
        choices = [Choice(r.choice_index, r.detok.text, r.finish_reason, r.output_ids, r.logprobs) for r in rows]
        return InferResponse(choices, Usage(len(rows[0].prompt_ids), sum(len(r.output_ids) for r in rows)),
                             rows[0].prompt_logprobs)


def _static_decoder(model: Any, info: EngineInfo, tp: TpGroup | None, static_decode: bool | None,
                    compile: bool | None) -> StaticDecoder | None:
    """The static-KV-cache decoder when asked (default: on CUDA) and the model allows it; None: eager decoding."""
    device = next(model.parameters()).device
    if not (static_decode or (static_decode is None and device.type == "cuda")):
        return None
    reason = "LoRA adapters are loaded" if info.adapters else "tensor parallel" if tp else unsupported_reason(model)
    if reason is not None:
        logger.info("pt engine: eager decoding (no static KV cache / CUDA graphs): %s", reason)
        return None
    return StaticDecoder(model, compile=device.type == "cuda" if compile is None else compile)


class _BlockingQueue:
    """Scheduler events for a consumer thread: `get` blocks that thread instead of suspending, so the request loop
    runs without an event loop (`_run_blocking`)."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def put(self, item: Any) -> None:
        self.queue.put(item)

    async def get(self) -> Any:
        return self.queue.get()


class _LoopQueue:
    """Scheduler events for an asyncio consumer: `put` from the scheduler thread never blocks it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the consumer's loop closed (Ctrl-C ended asyncio.run): nobody waits
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> Any:
        return await self.queue.get()


_Events = _BlockingQueue | _LoopQueue


def _run_blocking(agen: AsyncGenerator[T, None]) -> Iterator[T]:
    """Iterate an async generator whose awaits never suspend (they block this thread), with no event loop: each
    step runs it to its next yield. Closing this iterator closes the generator (its cleanup runs now)."""
    try:
        while True:
            try:
                agen.asend(None).send(None)
            except StopIteration as step:  # it yielded step.value
                value = step.value
            except StopAsyncIteration:
                return
            else:
                raise RuntimeError("the request loop suspended outside an event loop")
            yield value
    finally:
        with contextlib.suppress(StopIteration):  # (a generator that has ended just stops)
            agen.aclose().send(None)


def _unpack(item: Any) -> tuple[Row, str, str | None, TokenLogprob | None]:
    if isinstance(item, BaseException):
        raise item
    return item


def _attach_adapters(model: Any, adapters: dict[str, str]) -> Any:
    """Load every LoRA under its own name; requests pick one (or none) per row."""
    from peft import PeftModel

    names = iter(adapters.items())
    name, path = next(names)
    logger.info("Loading LoRA %s from %s", name, path)
    model = PeftModel.from_pretrained(model, path, adapter_name=name)
    for name, path in names:
        logger.info("Loading LoRA %s from %s", name, path)
        model.load_adapter(path, adapter_name=name)
    return model.eval()
