"""Duplicates: exact (after normalising case, punctuation and whitespace) and near (MinHash LSH).

Signatures are computed here with numpy (character n-grams hashed for all texts at once, then
linear permutations of the 32-bit hash space) because per-shingle Python hashing dominated the run
time; banding and candidate retrieval use `datasketch.MinHashLSH`; candidates are confirmed with the
exact Jaccard similarity of their n-gram sets, so reported pairs never rest on the estimate alone.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

_PUNCT = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower-cased, NFKC, punctuation removed, whitespace collapsed: the key for exact duplicates."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def ngrams(norm: str, n: int = 5, kind: str = "char") -> set[str]:
    """The n-gram set of a normalised text (the whole text when it is shorter than n)."""
    if kind == "word":
        words = norm.split()
        return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
    return {norm[i:i + n] for i in range(max(1, len(norm) - n + 1))}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser: spreads every input bit over the output (uint32 arrays wrap by design)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle_hashes(norms: list[str], n: int = 5, kind: str = "char") -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every n-gram of every normalised text, flat, and the count per text.

    Character n-grams are hashed with numpy over all texts at once (a polynomial over code points,
    then mixed): hashing millions of shingles one by one in Python was the slowest step of dedup.
    """
    if not norms:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    if kind == "word":
        import zlib

        grams = [sorted(ngrams(t, n, kind)) for t in norms]
        flat = [zlib.crc32(g.encode()) for gs in grams for g in gs]
        return np.array(flat, dtype=np.uint32), np.array([len(g) for g in grams], dtype=np.int64)
    # Texts shorter than n are padded so each still yields one shingle (the whole text).
    padded = [t if len(t) >= n else t + "\0" * (n - len(t)) for t in norms]
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32)
    lengths = np.array([len(t) for t in padded], dtype=np.int64)
    with np.errstate(over="ignore"):
        h = np.zeros(len(codes) - n + 1 if len(codes) >= n else 0, dtype=np.uint32)
        for k in range(n):
            h = h * np.uint32(0x01000193) + codes[k:len(codes) - n + 1 + k]
        h = _fmix32(h)
    sizes = lengths - n + 1
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    # positions start..start+size-1 of each text; windows crossing into the next text are skipped
    idx = np.repeat(starts - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes) + np.arange(sizes.sum())
    return h[idx], sizes


def signatures(norms: list[str], num_perm: int = 128, n: int = 5, kind: str = "char", seed: int = 1) -> np.ndarray:
    """MinHash signatures (rows of `num_perm` 32-bit values) of the n-gram sets of normalised texts."""
    flat, sizes = shingle_hashes(norms, n, kind)
    rng = np.random.default_rng(seed)
    # x -> a*x + b (mod 2**32) with odd a is a permutation of the 32-bit hash space
    a = (rng.integers(0, 2**32, size=num_perm, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    out = np.empty((len(norms), num_perm), dtype=np.uint32)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    batch = 64  # texts per step: keeps the (shingles x perms) block small enough to stay in cache
    with np.errstate(over="ignore"):
        for s in range(0, len(norms), batch):
            e = min(s + batch, len(norms))
            block = np.multiply(flat[offsets[s]:offsets[e], None], a[None, :])
            block += b
            out[s:e] = np.minimum.reduceat(block, offsets[s:e] - offsets[s], axis=0)
    return out.astype(np.uint64)


def _lsh(threshold: float, num_perm: int):
    from datasketch import MinHashLSH

    # Candidates are confirmed with the exact Jaccard afterwards, so the index may retrieve more
    # than asked; clamping keeps datasketch's band count >= 2 at thresholds near 1.
    return MinHashLSH(threshold=min(max(threshold, 0.1), 0.9), num_perm=num_perm)


def _lean(sig: np.ndarray):
    from datasketch import LeanMinHash

    # "legacy" is datasketch's name for 32-bit values stored as uint64, which is what signatures() makes
    return LeanMinHash(seed=1, hashvalues=sig, scheme="legacy")


class _LazyGrams:
    """N-gram sets built on first use: only LSH candidates need exact Jaccard confirmation."""

    def __init__(self, norms: list[str], n: int, kind: str):
        self.norms, self.n, self.kind, self.cache = norms, n, kind, {}

    def __getitem__(self, i: int) -> set[str]:
        if i not in self.cache:
            self.cache[i] = ngrams(self.norms[i], self.n, self.kind)
        return self.cache[i]


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:  # the smaller index stays the root, so the first occurrence is the one kept
            self.parent[max(ri, rj)] = min(ri, rj)


def exact_groups(texts: list[str]) -> list[list[int]]:
    """Groups (size > 1) of indices whose normalised texts are equal, first occurrence first."""
    seen: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        seen.setdefault(normalise(t), []).append(i)
    return [g for g in seen.values() if len(g) > 1]


def near_groups(texts: list[str], threshold: float = 0.85, num_perm: int = 128, n: int = 5,
                kind: str = "char") -> list[tuple[list[int], float]]:
    """Clusters (size > 1) of near-duplicate texts with the lowest confirmed similarity inside each."""
    norms = [normalise(t) for t in texts]
    grams = _LazyGrams(norms, n, kind)
    sigs = signatures(norms, num_perm, n, kind)
    lsh = _lsh(threshold, num_perm)
    with lsh.insertion_session() as session:
        for i, sig in enumerate(sigs):
            session.insert(i, _lean(sig), check_duplication=False)
    uf, low = _UnionFind(len(texts)), {}
    for i, sig in enumerate(sigs):
        for j in lsh.query(_lean(sig)):
            if j > i:
                sim = jaccard(grams[i], grams[j])
                if sim >= threshold:
                    uf.union(i, j)
                    low[(i, j)] = sim
    clusters: dict[int, list[int]] = {}
    for i in range(len(texts)):
        clusters.setdefault(uf.find(i), []).append(i)
    out = []
    for members in clusters.values():
        if len(members) > 1:
            m = set(members)
            sims = [s for (i, j), s in low.items() if i in m]
            out.append((members, min(sims)))
    return out


def near_pairs(queries: list[str], index: list[str], threshold: float = 0.85, num_perm: int = 128,
               n: int = 5, kind: str = "char") -> list[tuple[int, int, float]]:
    """(query i, index j, similarity) for every query text near-duplicating an indexed text."""
    qnorms, inorms = [normalise(t) for t in queries], [normalise(t) for t in index]
    qgrams, igrams = _LazyGrams(qnorms, n, kind), _LazyGrams(inorms, n, kind)
    lsh = _lsh(threshold, num_perm)
    with lsh.insertion_session() as session:
        for j, sig in enumerate(signatures(inorms, num_perm, n, kind)):
            session.insert(j, _lean(sig), check_duplication=False)
    pairs = []
    for i, sig in enumerate(signatures(qnorms, num_perm, n, kind)):
        for j in sorted(lsh.query(_lean(sig))):
            sim = jaccard(qgrams[i], igrams[j])
            if sim >= threshold:
                pairs.append((i, j, sim))
    return pairs


@dataclass
class DedupResult:
    """Records kept, records dropped with a reason, and the clusters found (for the report)."""

    kept: list[dict]
    dropped: list[tuple[dict, str]] = field(default_factory=list)
    clusters: list[dict] = field(default_factory=list)


def dedup(records: list[dict], texts: list[str], *, exact: bool = True, near: bool = True,
          threshold: float = 0.85, num_perm: int = 128, n: int = 5, kind: str = "char") -> DedupResult:
    """Keep the first record of every exact, then near-duplicate cluster; `texts` are what is compared."""
    drop: dict[int, str] = {}
    clusters = []
    if exact:
        for g in exact_groups(texts):
            drop.update({i: "exact_duplicate" for i in g[1:]})
            clusters.append(_cluster("exact", g, records, texts, 1.0))
    if near:
        alive = [i for i in range(len(records)) if i not in drop]
        for members, sim in near_groups([texts[i] for i in alive], threshold, num_perm, n, kind):
            g = [alive[k] for k in members]
            drop.update({i: "near_duplicate" for i in g[1:]})
            clusters.append(_cluster("near", g, records, texts, sim))
    kept = [r for i, r in enumerate(records) if i not in drop]
    return DedupResult(kept, [(records[i], why) for i, why in sorted(drop.items())], clusters)


def _cluster(kind: str, members: list[int], records: list[dict], texts: list[str], sim: float) -> dict:
    return {"kind": kind, "size": len(members), "similarity": round(sim, 3),
            "kept": records[members[0]]["id"], "dropped": [records[i]["id"] for i in members[1:]],
            "texts": [texts[i][:160] for i in members[:3]],
            "outputs": sorted({str(records[i].get("output")) for i in members})}
