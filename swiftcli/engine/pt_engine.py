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
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import queue
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, TokenLogprob, Usage
from ..template import Template
from .base import EngineInfo, InferEngine
from .detokenizer import IncrementalDetokenizer
from .sampling import RowSampling, apply_penalties, sample
from .static_decode import StaticDecoder, unsupported_reason
from .tensor_parallel import TpGroup

logger = logging.getLogger("swiftcli")
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class _Row:
    """One sequence being generated (a request has n of them)."""

    request_index: int
    choice_index: int
    prompt_ids: list[int]
    config: RequestConfig
    sampling: RowSampling
    detok: IncrementalDetokenizer
    stop_ids: set[int]
    adapter: str | None
    events: Any
    """A queue.Queue or _LoopQueue where the scheduler reports (row, new text, finish_reason, logprob) after each token, or an exception."""
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Filled at prefill when the config asks for them (the first row of a request only)."""
    finish_reason: str | None = None
    aborted: bool = False
    """Set by the consumer that went away; the scheduler reads it once per step (`abort_seen`)."""
    abort_seen: bool = False
    next_token: int = 0
    position: int = 0


@dataclass
class _Batch:
    """The running rows and their KV cache; `mask` covers exactly the cached positions.

    With the static decoder, cache and mask are None: row i's cache is the decoder's slot i.
    """

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor | None


class PtEngine(InferEngine):
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
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.decode_steps = max(1, decode_steps)
        self.tp = tp
        if info.adapters:
            self.model = _attach_adapters(model, info.adapters)
        self.static: StaticDecoder | None = None
        if static_decode or (static_decode is None and self.device.type == "cuda"):
            reason = ("LoRA adapters are loaded" if info.adapters else "tensor parallel" if tp
                      else unsupported_reason(model))
            if reason is None:
                self.static = StaticDecoder(model, compile=self.device.type == "cuda" if compile is None else compile)
            else:
                logger.info("pt engine: eager decoding (no static KV cache / CUDA graphs): %s", reason)
        self.info.details["decode"] = "eager" if self.static is None else "static KV cache" + (
            ", CUDA graphs" if self.static.cuda_graphs else "") + (", torch.compile" if self.static.compiled else "")
        self._waiting: queue.Queue[list[_Row]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.num_running = 0
        """Rows in the running batch (servers report it)."""

    # ---- public API ------------------------------------------------------------------------------------------
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None,
              use_tqdm: bool = False) -> list[InferResponse]:
        events: queue.Queue = queue.Queue()
        groups = [self._make_rows(i, r, config, events) for i, r in enumerate(requests)]
        rows = [row for group in groups for row in group]
        for group in groups:
            self._submit(group)
        try:
            pending = len(rows)
            while pending:
                _, _, finish_reason, _ = self._next_event(events)
                pending -= finish_reason is not None
        finally:
            for row in rows:
                row.aborted = row.finish_reason is None
        return [self._response(group) for group in groups]

    def infer_stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[StreamDelta]:
        events: queue.Queue = queue.Queue()
        rows = self._make_rows(0, request, config, events)
        self._submit(rows)
        try:
            pending = len(rows)
            prompt_logprobs = rows[0].config.prompt_logprobs is not None
            while pending:
                row, delta, finish_reason, logprob = self._next_event(events)
                if delta or finish_reason or prompt_logprobs:
                    yield StreamDelta(row.choice_index, delta, finish_reason, [logprob] if logprob else None,
                                      prompt_logprobs=rows[0].prompt_logprobs if prompt_logprobs else None,
                                      completion_tokens=len(row.output_ids))
                    prompt_logprobs = False
                pending -= finish_reason is not None
            yield StreamDelta(0, "", None, usage=self._response(rows).usage)
        finally:  # the consumer went away (closed iterator, Ctrl-C): stop generating for it
            for row in rows:
                row.aborted = row.finish_reason is None

    async def infer_async(self, request: InferRequest, config: RequestConfig | None = None) -> InferResponse:
        """Native async: cancelling the awaiting task (a client that left) aborts the rows at the next step."""
        events = _LoopQueue()
        rows = self._make_rows(0, request, config, events)
        self._submit(rows)
        try:
            pending = len(rows)
            while pending:
                _, _, finish_reason, _ = _unpack(await events.get())
                pending -= finish_reason is not None
        finally:
            for row in rows:
                row.aborted = row.finish_reason is None
        return self._response(rows)

    async def infer_stream_async(self, request: InferRequest,
                                 config: RequestConfig | None = None) -> AsyncIterator[StreamDelta]:
        events = _LoopQueue()
        rows = self._make_rows(0, request, config, events)
        self._submit(rows)
        try:
            pending = len(rows)
            prompt_logprobs = rows[0].config.prompt_logprobs is not None
            while pending:
                row, delta, finish_reason, logprob = _unpack(await events.get())
                if delta or finish_reason or prompt_logprobs:
                    yield StreamDelta(row.choice_index, delta, finish_reason, [logprob] if logprob else None,
                                      prompt_logprobs=rows[0].prompt_logprobs if prompt_logprobs else None,
                                      completion_tokens=len(row.output_ids))
                    prompt_logprobs = False
                pending -= finish_reason is not None
            yield StreamDelta(0, "", None, usage=self._response(rows).usage)
        finally:
            for row in rows:
                row.aborted = row.finish_reason is None

    @staticmethod
    def _next_event(events: queue.Queue) -> tuple[_Row, str, str | None, TokenLogprob | None]:
        return _unpack(events.get())

    # ---- building rows ---------------------------------------------------------------------------------------
    def _make_rows(self, index: int, request: InferRequest, config: RequestConfig | None,
                   events: queue.Queue | _LoopQueue) -> list[_Row]:
        prompt_ids = self.encode(request).input_ids
        config = self.resolve_config(config, len(prompt_ids))
        if self.tp is not None and config.seed is None:  # every rank must draw the same tokens
            config = config.replace(seed=random.getrandbits(31))
        return [self._row(index, k, prompt_ids, config, request.adapter, events) for k in range(config.n)]

    def _row(self, index: int, k: int, prompt_ids: list[int], config: RequestConfig, adapter: str | None,
             events: Any) -> _Row:
        """Choice k of request `index`: everything a rank needs to generate it (see `_spec`)."""
        stop = config.stop if config.ignore_eos else list(dict.fromkeys(config.stop + self.template.stop_words))
        stop_ids = set(config.stop_token_ids) | (set() if config.ignore_eos else set(self.template.stop_token_ids))
        return _Row(index, k, prompt_ids, config, RowSampling.from_config(config, seed_offset=k),
                    IncrementalDetokenizer(self.tokenizer, prompt_ids, stop, config.min_tokens),
                    stop_ids, adapter, events, logprobs=[] if config.logprobs else None)

    def _response(self, rows: list[_Row]) -> InferResponse:
        choices = [Choice(r.choice_index, r.detok.text, r.finish_reason, r.output_ids, r.logprobs) for r in rows]
        return InferResponse(choices, Usage(len(rows[0].prompt_ids), sum(len(r.output_ids) for r in rows)),
                             rows[0].prompt_logprobs)

    # ---- the scheduler ---------------------------------------------------------------------------------------
    def _submit(self, rows: list[_Row]) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="swift-pt-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)  # (the thread keeps the engine alive anyway)
        self._waiting.put(rows)

    def _loop(self) -> None:
        batch: _Batch | None = None
        held: list[_Row] = []  # taken from the queue but not yet admitted (batch full)
        while True:
            arrived = [self._waiting.get()] if batch is None and not held else []
            while True:  # everything that arrived since the last step
                try:
                    arrived.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            if None in arrived:  # close(): tell the followers, stop
                if self.tp is not None:
                    self.tp.send(None)
                return
            held = [r for r in held + [r for rows in arrived for r in rows] if not r.aborted]
            room = self.max_batch_size - (len(batch.rows) if batch else 0)
            admit, held = held[:max(room, 0)], held[max(room, 0):]
            aborted = [i for i, r in enumerate(batch.rows) if r.aborted] if batch else []
            if self.tp is not None:
                self.tp.send(([_spec(r) for r in admit], aborted))
            batch = self._run_step(batch, admit, aborted)

    def follow(self) -> None:
        """Tensor-parallel ranks 1..N-1: run the steps rank 0 announces, on this rank's shard, until it says stop."""
        batch: _Batch | None = None
        while (message := self.tp.receive()) is not None:
            specs, aborted = message
            batch = self._run_step(batch, [self._row(*spec, events=_NO_EVENTS) for spec in specs], aborted)

    def close(self) -> None:
        """Stop the scheduler thread after its current step (also at exit: Python ending a daemon thread inside a
        torch op aborts the process, "terminate called without an active exception"). Tensor parallel, rank 0:
        stop the followers too (through the scheduler thread, which owns the channel)."""
        if self.tp is not None and self.tp.rank != 0:
            return
        with self._start_lock:
            if self._thread is None:
                if self.tp is not None:
                    self.tp.send(None)
                self._thread = threading.current_thread()  # no scheduler will start now
            elif self._thread is not threading.current_thread():
                self._waiting.put(None)
                self._thread.join(timeout=30)
        if self.tp is not None:
            self.tp.wait_followers()

    def _run_step(self, batch: _Batch | None, admit: list[_Row], aborted: list[int]) -> _Batch | None:
        """Prefill the admitted rows, then decode one step for the whole batch; rows `aborted` stop now."""
        for i in aborted:
            batch.rows[i].abort_seen = True
        try:
            with torch.inference_mode():
                for group in _prefill_groups(admit):
                    batch = self._merge(batch, self._prefill(group))
                if batch is not None:
                    batch = self._step(batch)
        except Exception as e:  # a failed forward fails the requests in it, not the engine
            logger.exception("generation failed")
            for row in (batch.rows if batch else []) + admit:
                row.finish_reason = row.finish_reason or "abort"
                row.events.put(e)
            batch = None
        self.num_running = len(batch.rows) if batch else 0
        return batch

    def _forward(self, rows: list[_Row], input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any, all_logits: bool = False) -> tuple[torch.Tensor, Any]:
        """The last position's logits [B, V] (all_logits: every position's, [B, T, V]) and the cache."""
        kwargs = {"adapter_names": [r.adapter or BASE_ADAPTER for r in rows]} if self.info.adapters else {}
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=0 if all_logits else 1, **kwargs)
        return (out.logits if all_logits else out.logits[:, -1]).float(), out.past_key_values

    def _prefill(self, rows: list[_Row]) -> _Batch:
        """Run the new rows' prompts (left-padded) and sample their first tokens."""
        pad, width = self.tokenizer.pad_token_id, max(len(r.prompt_ids) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        scored = _scores_prompt(rows[0])  # then it is the only row (_prefill_groups)
        logits, cache = self._forward(rows, ids, mask, positions, None, all_logits=scored)
        if scored:
            rows[0].prompt_logprobs = self._prompt_logprobs(rows[0], logits[0])
            logits = logits[:, -1]
        for r in rows:
            r.position = len(r.prompt_ids)
        return self._sample_and_prune(_Batch(rows, cache, mask), logits)

    def _prompt_logprobs(self, row: _Row, logits: torch.Tensor) -> list[TokenLogprob | None]:
        """Each prompt token's logprob given the tokens before it (logits: [prompt length, V]); vLLM's shape."""
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        ids = torch.tensor(row.prompt_ids[1:], device=logprobs.device)
        chosen = logprobs.gather(1, ids[:, None])[:, 0]
        ranks = (logprobs > chosen[:, None]).sum(-1) + 1
        top = logprobs.topk(row.config.prompt_logprobs, dim=-1) if row.config.prompt_logprobs else None
        out: list[TokenLogprob | None] = [None]
        for j, (tid, value, rank) in enumerate(zip(ids.tolist(), chosen.tolist(), ranks.tolist())):
            top_ids = top.indices[j].tolist() if top is not None else []
            top_values = top.values[j].tolist() if top is not None else []
            top_items = [(self.tokenizer.decode([t]), v) for t, v in zip(top_ids, top_values)]
            out.append(TokenLogprob(self.tokenizer.decode([tid]), value, top_items, tid, rank, top_ids))
        return out

    def _step(self, batch: _Batch) -> _Batch | None:
        """One token for every running row (with the static decoder, up to decode_steps greedy ones)."""
        if self.static is not None:
            return self._static_step(batch)
        rows = batch.rows
        ids = torch.tensor([[r.next_token] for r in rows], device=self.device)
        positions = torch.tensor([[r.position] for r in rows], device=self.device)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], dim=1)
        logits, cache = self._forward(rows, ids, mask, positions, batch.cache)
        for r in rows:
            r.position += 1
        return self._sample_and_prune(_Batch(rows, cache, mask), logits)

    def _static_step(self, batch: _Batch) -> _Batch | None:
        rows, steps = batch.rows, self._greedy_steps(batch.rows)
        ids, positions = [r.next_token for r in rows], [r.position for r in rows]
        if steps == 1:
            logits = self.static.forward(ids, positions)
            for r in rows:
                r.position += 1
            return self._sample_and_prune(batch, logits)
        keep = []
        for i, (row, tokens) in enumerate(zip(rows, self.static.greedy(ids, positions, steps,
                                                                       self._ahead(rows, steps)))):
            for tid in tokens:  # a row that stops inside the window drops the tokens after its stop
                row.position += 1
                if not self._emit(row, tid, None):
                    break
            else:
                keep.append(i)
        return self._prune(batch, keep)

    def _greedy_steps(self, rows: list[_Row]) -> int:
        """How many tokens the rows can decode on the device before the host must look (1: sample on the host)."""
        if self.decode_steps == 1 or any(not r.sampling.plain_greedy or r.logprobs is not None
                                         or len(r.output_ids) < r.config.min_tokens for r in rows):
            return 1
        room = min(min(r.config.max_tokens - len(r.output_ids), self.info.max_model_len - 1 - r.position)
                   for r in rows)  # so no row passes its length limit inside the window
        return max(1, min(self.decode_steps, room))

    def _ahead(self, rows: list[_Row], steps: int) -> int:
        """Greedy steps the static decoder may queue behind this window of `steps`: the next window, unless a request
        waits to join or a row reaches its length limit (a stop token or string still wastes it)."""
        if not self._waiting.empty():
            return 0
        room = min(min(r.config.max_tokens - len(r.output_ids), self.info.max_model_len - 1 - r.position)
                   for r in rows) - steps
        return max(0, min(self.decode_steps, room))

    def _sample_and_prune(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        rows = batch.rows
        raw = torch.log_softmax(logits, dim=-1) if any(r.logprobs is not None for r in rows) else None
        logits = apply_penalties(logits, [r.prompt_ids + r.output_ids for r in rows], [r.sampling for r in rows])
        for i, r in enumerate(rows):  # min_tokens: no stop id before then (vLLM's rule)
            if len(r.output_ids) < r.config.min_tokens and r.stop_ids:
                logits[i, list(r.stop_ids)] = float("-inf")
        next_ids = sample(logits, [r.sampling for r in rows]).tolist()
        keep = [i for i, (row, tid) in enumerate(zip(rows, next_ids))
                if self._emit(row, tid, raw[i] if raw is not None else None)]
        return self._prune(batch, keep)

    def _emit(self, row: _Row, token_id: int, logprobs: torch.Tensor | None) -> bool:
        """Account a sampled token to its row and report it; False when the row is done (or was aborted)."""
        if row.abort_seen:
            row.finish_reason = "abort"
            return False
        delta, logprob = self._advance(row, token_id, logprobs)
        row.events.put((row, delta, row.finish_reason, logprob))
        if row.finish_reason is None:
            row.next_token = token_id
            return True
        return False

    def _prune(self, batch: _Batch, keep: list[int]) -> _Batch | None:
        """The batch of rows `keep` (indices into batch.rows)."""
        rows = batch.rows
        if not keep:
            return None
        if batch.cache is None:  # static slots: the kept rows move to the first slots
            if len(keep) < len(rows):
                self.static.keep(keep, max(rows[i].position for i in keep))
            return _Batch([rows[i] for i in keep], None, None)
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch = _Batch([rows[i] for i in keep], batch.cache, batch.mask[index])
        return _trim_left(batch)

    def _merge(self, running: _Batch | None, new: _Batch | None) -> _Batch | None:
        """Stack two batches: both caches are left-padded to the longer one (padding is masked out).

        With the static decoder the new rows' prefill cache is copied to the slots after the running rows'."""
        if self.static is not None and new is not None:
            start = len(running.rows) if running else 0
            self.static.load(start, new.cache, [r.position for r in new.rows])
            return _Batch((running.rows if running else []) + new.rows, None, None)
        if running is None or new is None:
            return running or new
        width = max(running.mask.shape[1], new.mask.shape[1])
        for a, b in zip(running.cache.layers, new.cache.layers):
            a.keys = torch.cat([_pad_left(a.keys, width, 2), _pad_left(b.keys, width, 2)])
            a.values = torch.cat([_pad_left(a.values, width, 2), _pad_left(b.values, width, 2)])
        mask = torch.cat([_pad_left(running.mask, width, 1), _pad_left(new.mask, width, 1)])
        return _Batch(running.rows + new.rows, running.cache, mask)

    def _advance(self, row: _Row, token_id: int, logprobs: torch.Tensor | None) -> tuple[str, TokenLogprob | None]:
        """Account one sampled token to its row: (the text it settled, its logprob); sets finish_reason when done."""
        row.output_ids.append(token_id)  # a stop token counts as generated (as in vLLM's usage) but adds no text
        if token_id in row.stop_ids:
            row.finish_reason = "stop"
            return row.detok.flush(), None
        logprob = None
        if row.logprobs is not None and logprobs is not None:
            logprob = self._token_logprob(token_id, logprobs, row.config.top_logprobs or 0)
            row.logprobs.append(logprob)
        delta = row.detok.add(token_id)
        if row.detok.stopped:
            row.finish_reason = "stop"
        elif len(row.output_ids) >= row.config.max_tokens or row.position + 1 >= self.info.max_model_len:
            row.finish_reason = "length"
            delta += row.detok.flush()
        return delta, logprob

    def _token_logprob(self, token_id: int, logprobs: torch.Tensor, top: int) -> TokenLogprob:
        decode = self.tokenizer.decode
        top_items = []
        if top:
            values, ids = logprobs.topk(top)
            top_items = [(decode([t]), v) for t, v in zip(ids.tolist(), values.tolist())]
        return TokenLogprob(decode([token_id]), float(logprobs[token_id]), top_items)


def _spec(row: _Row) -> tuple[int, int, list[int], RequestConfig, str | None]:
    """What a tensor-parallel follower needs to rebuild a row (`PtEngine._row`)."""
    return row.request_index, row.choice_index, row.prompt_ids, row.config, row.adapter


class _NoEvents:
    """A follower's rows report to nobody."""

    def put(self, item: Any) -> None:
        pass


_NO_EVENTS = _NoEvents()


def _scores_prompt(row: _Row) -> bool:
    """Whether this row reports its request's prompt logprobs (one row per request does)."""
    return row.choice_index == 0 and row.config.prompt_logprobs is not None


def _prefill_groups(rows: list[_Row]) -> list[list[_Row]]:
    """Rows to prefill together: a row that scores its prompt needs every position's logits ([T, V]), so it
    goes alone (its memory stays one prompt's); the rest in one batch."""
    scored = [[r] for r in rows if _scores_prompt(r)]
    rest = [r for r in rows if not _scores_prompt(r)]
    return scored + ([rest] if rest else [])


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


def _unpack(item: Any) -> tuple[_Row, str, str | None, TokenLogprob | None]:
    if isinstance(item, BaseException):
        raise item
    return item


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _trim_left(batch: _Batch) -> _Batch:
    """Drop leading cache columns that no remaining row uses (left by rows that finished)."""
    used = batch.mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start > 0:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        batch.mask = batch.mask[:, start:]
    return batch


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
