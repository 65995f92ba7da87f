"""Scores of a dataset run against its labels: acc (exact match after normalising), ROUGE-L, BLEU-4."""
from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def normalize_answer(text: str) -> str:
    """What exact match compares: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class MixedScriptTokenizer:
    """Words for ROUGE: sacrebleu's 'zh' tokenizer (13a for Latin text, one token per Chinese character), lower-cased;
    rouge-score's own tokenizer drops every non-Latin character, so Chinese rows would all score 0."""

    def __init__(self) -> None:
        from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

        self._tokenize = TokenizerZh()

    def tokenize(self, text: str) -> list[str]:
        return self._tokenize(text.lower()).split()


def compute_metrics(responses: list[str], labels: list[str], names: Sequence[str]) -> dict[str, float]:
    """acc: share of exact matches after normalising; rouge: mean ROUGE-L F1 (rouge-score); bleu: corpus BLEU-4
    (sacrebleu, 'zh' tokenization). All in [0, 1]."""
    scores: dict[str, float] = {}
    if "acc" in names:
        scores["acc"] = sum(normalize_answer(r) == normalize_answer(l) for r, l in zip(responses, labels)) / len(labels)
    if "rouge" in names:
        from rouge_score.rouge_scorer import RougeScorer

        scorer = RougeScorer(["rougeL"], tokenizer=MixedScriptTokenizer())
        scores["rouge"] = sum(scorer.score(l, r)["rougeL"].fmeasure for r, l in zip(responses, labels)) / len(labels)
    if "bleu" in names:
        import sacrebleu

        scores["bleu"] = sacrebleu.corpus_bleu(responses, [labels], tokenize="zh").score / 100
    return {name: round(value, 4) for name, value in scores.items()}
