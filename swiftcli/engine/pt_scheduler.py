"""The pt engine's scheduler: one thread owns the model and runs the batch, step by step.

Between decode steps it admits the rows that arrived (up to max_batch_size; their prompts are prefilled and merged
into the batch) and drops the rows whose consumer went away; each step then samples one token per row (with the
static decoder, up to `decode_steps` greedy ones) and reports it on the row's event queue. Under tensor parallel,
rank 0 announces every step's admissions and aborts to the followers, which replay them (`follow`).
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
from typing import Any

import torch

from ..protocol import TokenLogprob
from ..template import Template
from .base import EngineInfo
from .pt_batch import Batch, Row, merge, new_cache, new_row, prefill_groups, prune, scores_prompt, spec
from .sampling import apply_penalties, sample
from .static_decode import StaticDecoder
from .tensor_parallel import TpGroup

logger = logging.getLogger("swiftcli")
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


class _NoEvents:
    """A follower's rows report to nobody."""

    def put(self, item: Any) -> None:
        pass


_NO_EVENTS = _NoEvents()


class Scheduler:
    """Owns the model and the running batch; requests reach it only through `submit` and their rows' flags."""

    def __init__(self, model: Any, template: Template, info: EngineInfo, static: StaticDecoder | None,
                 max_batch_size: int, decode_steps: int, tp: TpGroup | None):
        self.model, self.template, self.info, self.static, self.tp = model, template, info, static, tp
        self.tokenizer = template.tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.decode_steps = max(1, decode_steps)
        self._waiting: queue.Queue[list[Row] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # ---- the thread ------------------------------------------------------------------------------------------
    def submit(self, rows: list[Row]) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="swift-pt-engine", daemon=True)
                self._thread.start()
                atexit.register(self.close)  # (the thread keeps the scheduler alive anyway)
        self._waiting.put(rows)

    def _loop(self) -> None:
        batch: Batch | None = None
        held: list[Row] = []  # taken from the queue but not yet admitted (batch full)
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
                self.tp.send(([spec(r) for r in admit], aborted))
            batch = self._run_step(batch, admit, aborted)

    def follow(self) -> None:
        """Tensor-parallel ranks 1..N-1: run the steps rank 0 announces, on this rank's shard, until it says stop."""
        batch: Batch | None = None
        while (message := self.tp.receive()) is not None:
            specs, aborted = message
            batch = self._run_step(batch, [new_row(self.template, s, _NO_EVENTS) for s in specs], aborted)

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

    # ---- one step ----------------------------------------------------------------------------------------------
    def _run_step(self, batch: Batch | None, admit: list[Row], aborted: list[int]) -> Batch | None:
        """Prefill the admitted rows, then decode one step for the whole batch; rows `aborted` stop now."""
        for i in aborted:
            batch.rows[i].abort_seen = True
        try:
            with torch.inference_mode():
                for group in prefill_groups(admit):
                    batch = merge(batch, self._prefill(group), self.static)
                if batch is not None:
                    batch = self._step(batch)
        except Exception as e:  # a failed forward fails the requests in it, not the engine
            logger.exception("generation failed")
            for row in (batch.rows if batch else []) + admit:
                row.finish_reason = row.finish_reason or "abort"
                row.events.put(e)
            batch = None
        return batch

    def _forward(self, rows: list[Row], input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any, all_logits: bool = False) -> tuple[torch.Tensor, Any]:
        """The last position's logits [B, V] (all_logits: every position's, [B, T, V]) and the cache."""
        kwargs = {"adapter_names": [r.adapter or BASE_ADAPTER for r in rows]} if self.info.adapters else {}
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=0 if all_logits else 1, **kwargs)
        return (out.logits if all_logits else out.logits[:, -1]).float(), out.past_key_values

    def _prefill(self, rows: list[Row]) -> Batch | None:
        """Run the new rows' prompts (left-padded) and sample their first tokens."""
        pad, width = self.tokenizer.pad_token_id, max(len(r.prompt_ids) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        scored = scores_prompt(rows[0])  # then it is the only row (prefill_groups)
        logits, cache = self._forward(rows, ids, mask, positions, new_cache(self.model.config),
                                      all_logits=scored)
        if scored:
            rows[0].prompt_logprobs = self._prompt_logprobs(rows[0], logits[0])
            logits = logits[:, -1]
        for r in rows:
            r.position = len(r.prompt_ids)
        return self._sample_and_prune(Batch(rows, cache, mask), logits)

    def _prompt_logprobs(self, row: Row, logits: torch.Tensor) -> list[TokenLogprob | None]:
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

    def _step(self, batch: Batch) -> Batch | None:
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
        return self._sample_and_prune(Batch(rows, cache, mask), logits)

    def _static_step(self, batch: Batch) -> Batch | None:
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
        return prune(batch, keep, self.static)

    def _greedy_steps(self, rows: list[Row]) -> int:
        """How many tokens the rows can decode on the device before the host must look (1: sample on the host)."""
        if self.decode_steps == 1 or any(not r.sampling.plain_greedy or r.logprobs is not None
                                         or len(r.output_ids) < r.config.min_tokens for r in rows):
            return 1
        room = min(min(r.config.max_tokens - len(r.output_ids), self.info.max_model_len - 1 - r.position)
                   for r in rows)  # so no row passes its length limit inside the window
        return max(1, min(self.decode_steps, room))

    def _ahead(self, rows: list[Row], steps: int) -> int:
        """Greedy steps the static decoder may queue behind this window of `steps`: the next window, unless a request
        waits to join or a row reaches its length limit (a stop token or string still wastes it)."""
        if not self._waiting.empty():
            return 0
        room = min(min(r.config.max_tokens - len(r.output_ids), self.info.max_model_len - 1 - r.position)
                   for r in rows) - steps
        return max(0, min(self.decode_steps, room))

    # ---- tokens -> rows ----------------------------------------------------------------------------------------
    def _sample_and_prune(self, batch: Batch, logits: torch.Tensor) -> Batch | None:
        rows = batch.rows
        raw = torch.log_softmax(logits, dim=-1) if any(r.logprobs is not None for r in rows) else None
        logits = apply_penalties(logits, [r.prompt_ids + r.output_ids for r in rows], [r.sampling for r in rows])
        for i, r in enumerate(rows):  # min_tokens: no stop id before then (vLLM's rule)
            if len(r.output_ids) < r.config.min_tokens and r.stop_ids:
                logits[i, list(r.stop_ids)] = float("-inf")
            if r.matcher is not None:  # structured output: only what the grammar allows next
                r.matcher.mask(logits[i])
        next_ids = sample(logits, [r.sampling for r in rows]).tolist()
        keep = [i for i, (row, tid) in enumerate(zip(rows, next_ids))
                if self._emit(row, tid, raw[i] if raw is not None else None)]
        return prune(batch, keep, self.static)

    def _emit(self, row: Row, token_id: int, logprobs: torch.Tensor | None) -> bool:
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

    def _advance(self, row: Row, token_id: int, logprobs: torch.Tensor | None) -> tuple[str, TokenLogprob | None]:
        """Account one sampled token to its row: (the text it settled, its logprob); sets finish_reason when done."""
        row.output_ids.append(token_id)  # a stop token counts as generated (as in vLLM's usage) but adds no text
        if row.matcher is not None:
            row.matcher.accept(token_id)
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
