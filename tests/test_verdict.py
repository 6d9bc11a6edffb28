"""The verdict: wins / ties / loses per baseline from the paired tests, and advice drawn from the run's records."""

from __future__ import annotations

from tunelab.evaluate.significance import score_systems
from tunelab.evaluate.verdict import conclude, render

LABELS = ["card", "transfer", "pin"]


def _test(finetuned_right: int, zero_right: int, n: int = 60) -> dict:
    refs = {str(i): LABELS[i % 3] for i in range(n)}
    wrong = lambda i: LABELS[(i + 1) % 3]  # noqa: E731
    systems = {"finetuned": {str(i): refs[str(i)] if i < finetuned_right else wrong(i) for i in range(n)},
               "zero_shot": {str(i): refs[str(i)] if i < zero_right else wrong(i) for i in range(n)}}
    return score_systems(systems, {k: v for k, v in refs.items()}, ["accuracy", "f1_macro"], samples=200)


def _log(evals: list[float], train: list[float] | None = None) -> list[dict]:
    rows = []
    for k, v in enumerate(evals, start=1):
        if train:
            rows.append({"step": 10 * k - 1, "loss": train[k - 1]})
        rows.append({"step": 10 * k, "eval_loss": v})
    return rows


def test_a_clear_win_is_called_a_win_without_advice():
    v = conclude(_test(55, 10), _log([2.0, 1.5, 1.497]), {}, "lora")
    assert [c["outcome"] for c in v["comparisons"]] == ["wins"] and v["wins_every_baseline"]
    assert v["conclusion"].startswith("The fine-tuned model wins zero-shot (+0.7500 accuracy, p < 1e-4, 60 shared")
    assert v["next"] == []


def test_a_tie_explains_what_to_try_from_the_runs_own_records():
    manifest = {"accounting": {"train": {"dropped": {"train_limit": 900}}},
                "stats": {"train": {"labels": {"card": 5, "transfer": 30, "pin": 30}}}}
    v = conclude(_test(30, 29), _log([2.0, 1.5, 1.2]), manifest, "lora", train_limit=100)
    assert v["comparisons"][0]["outcome"] == "ties" and not v["wins_every_baseline"]
    assert "ties with zero-shot" in v["conclusion"]
    text = render(v)
    assert "validation loss was still falling at the last validation (1.5 -> 1.2)" in text
    assert "data.train_limit left 900 training examples out" in text
    assert "some classes have only 5 training examples" in text
    assert "the 95% intervals are" in text and text.splitlines()[1] == "What to try next:"


def test_a_loss_with_overfitting_says_so():
    v = conclude(_test(10, 55), _log([1.0, 0.8, 0.9, 1.1], train=[1.2, 0.9, 0.6, 0.3]), {}, "lora")
    assert v["comparisons"][0]["outcome"] == "loses"
    assert any("validation loss rose while training loss fell from step 30" in n for n in v["next"])


def test_a_win_that_is_still_improving_says_it_could_do_better():
    v = conclude(_test(55, 10), _log([2.0, 1.5, 1.0]), {}, "lora")
    assert v["wins_every_baseline"] and len(v["next"]) == 1 and "train longer" in v["next"][0]
    assert "It could do better still:" in render(v)
