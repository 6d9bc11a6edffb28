"""Time near-duplicate detection (MinHash LSH, as `tunelab prepare` runs it) on 100,000 short texts.

    python benchmarks/dedup_throughput.py [--n 100000] [--json PATH]

The texts are generated here (seeded): short banking-style questions, one in ten a small edit of an
earlier one, so the LSH has real clusters to find. Target: <= 60 s for 100k texts on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from tunelab.data.dedup import dedup

_WORDS = ("card account transfer payment money balance refund fee exchange rate top up pending "
          "declined cash withdrawal atm pin verify identity app phone limit international charge "
          "statement currency wallet apple google virtual physical lost stolen arrive delivery "
          "blocked cancel change address password beneficiary salary").split()
_OPENERS = ("how do i", "why is my", "can i", "what happens if my", "where can i see my", "is there a",
            "i need help with my", "when will my")


def make_texts(n: int, seed: int = 0) -> list[str]:
    """`n` short texts; about 10% are near-duplicates (one word changed) of an earlier text."""
    rng = random.Random(seed)
    texts: list[str] = []
    for i in range(n):
        if texts and rng.random() < 0.1:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(_WORDS)
            texts.append(" ".join(words))
        else:
            body = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14)))
            texts.append(f"{rng.choice(_OPENERS)} {body} {i}?")
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--json", dest="json_path", default=None, help="write {\"seconds_100k\": ...} here")
    args = ap.parse_args()
    texts = make_texts(args.n)
    records = [{"id": str(i), "output": None} for i in range(len(texts))]
    start = time.perf_counter()
    res = dedup(records, texts, exact=True, near=True, threshold=args.threshold)
    seconds = time.perf_counter() - start
    per_100k = seconds * 100_000 / args.n
    near = sum(1 for _, why in res.dropped if why == "near_duplicate")
    exact = len(res.dropped) - near
    print(f"{args.n} texts: {seconds:.1f} s ({per_100k:.1f} s per 100k); dropped {exact} exact and "
          f"{near} near-duplicates in {len(res.clusters)} clusters; target <= 60 s per 100k")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump({"seconds_100k": round(per_100k, 2), "n": args.n, "seconds": round(seconds, 2),
                       "exact_dropped": exact, "near_dropped": near}, f)


if __name__ == "__main__":
    main()
