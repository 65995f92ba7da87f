"""Token ids -> text, one token at a time, without ever emitting half a UTF-8 character or half a stop word."""
from __future__ import annotations

from typing import Any

# Tokens of the prompt kept as left context, so tokenizers that drop a word's leading space when it starts a
# decode (sentencepiece) still produce it.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """vLLM's prefix/read-offset scheme: decode a short window and emit only text that has settled."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: list[str] | None = None, min_tokens: int = 0,
                 skip_special_tokens: bool = True):
        """min_tokens: text of the first that many tokens never ends the reply (vLLM's rule)."""
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.min_tokens, self.added, self.stop_from = min_tokens, 0, 0
        self.ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.stop = [s for s in (stop or []) if s]
        self.text = ""
        """All settled text so far (cut at a stop word once one appears)."""
        self.emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Feed one generated token; returns the new text that is safe to show (maybe '')."""
        self.ids.append(token_id)
        self.added += 1
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.added > self.min_tokens:
                self._check_stop()
            else:
                self.stop_from = len(self.text)
        return self._take()

    def flush(self) -> str:
        """At the end: whatever was held back as a possible stop-word prefix is final text now."""
        self.stop = []
        return self._take()

    def _check_stop(self) -> None:
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.emitted - longest, self.stop_from - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _take(self) -> str:
        end = len(self.text)
        if not self.stopped:  # hold back a tail that could still grow into a stop word
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted:end], end
        return delta
