"""Exact (content hash) and near-duplicate (MinHash LSH) document filtering, streaming.

Memory per kept document: one 32-byte digest plus the LSH band keys (``num_perm`` hashes),
which bounds a multi-million-document corpus to a few GB; the text itself is never kept.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")
SHINGLE = 5


def shingles(text: str) -> set[str]:
    """Word 5-grams for English, character 5-grams for Chinese (no spaces between words there)."""
    if len(_CJK.findall(text)) > len(text) / 4:
        chars = re.sub(r"\s+", "", text)
        return {chars[i : i + SHINGLE] for i in range(max(1, len(chars) - SHINGLE + 1))}
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))}


def exact_key(text: str) -> str:
    """Hash of the text with case and whitespace folded (so re-wrapped copies count as exact)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


class Deduper:
    """``check(doc_id, text)`` -> None (new; remembered), ``"exact"`` or ``"near"`` (a duplicate)."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, seed: int = 1):
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self._exact: set[bytes] = set()
        try:
            self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError:
            # Very high thresholds give datasketch a single band; two bands of half the hashes still
            # find every pair that similar (candidates are confirmed against the threshold below).
            self._lsh = MinHashLSH(num_perm=num_perm, params=(2, num_perm // 2))
        self._sigs: dict[str, np.ndarray] = {}  # hash values only (the MinHash object is 3x larger)

    def minhash(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([s.encode("utf-8") for s in shingles(text)])
        return m

    def check(self, doc_id: str, text: str) -> str | None:
        key = bytes.fromhex(exact_key(text))
        if key in self._exact:
            return "exact"
        m = self.minhash(text)
        # LSH returns candidates; confirm with the estimated Jaccard so the threshold is honoured.
        for cand in self._lsh.query(m):
            if float(np.mean(self._sigs[cand] == m.hashvalues)) >= self.threshold:
                return "near"
        self._exact.add(key)
        self._lsh.insert(doc_id, m)
        self._sigs[doc_id] = m.hashvalues.copy()
        return None
