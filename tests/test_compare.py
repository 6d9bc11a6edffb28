"""`tunelab compare`: run folders written by the evaluate stage's own writers, compared run by run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunelab.report import compare
from tunelab.cli import app
from tunelab.config import config_from_dict
from tunelab.evaluate.common import Systems, prediction_rows, score, write_results
from tunelab.core.rundir import RunDir

LABELS = ["card", "transfer", "other"]


def labelled_test(n: int = 60, prefix: str = "test.csv") -> list[dict]:
    return [{"id": f"{prefix}:{i + 2}", "input": {"text": f"message number {i}"}, "output": LABELS[i % 3]}
            for i in range(n)]


def summary_test(n: int = 30) -> list[dict]:
    return [{"id": f"test.jsonl:{i + 1}", "input": {"text": f"dialogue {i}"}, "output": f"Tom buys {i} apples.",
             "references": [f"Tom buys {i} apples.", f"Tom gets {i} apples at the market."]} for i in range(n)]


def make_run(tmp_path, name: str, test: list[dict], predictions: list[str], method: str = "lora") -> RunDir:
    """A run folder with metrics.json `test` and predictions.jsonl written by evaluate's writers."""
    cfg = config_from_dict({"name": name, "runs_dir": str(tmp_path / "runs"), "data": {"train": "x.jsonl"},
                            "model": {"name": "tiny"}, "method": {"name": method},
                            "eval": {"baselines": [], "bootstrap_samples": 200}})
    rd = RunDir.create(cfg)
    systems = Systems(test)
    systems.predictions["finetuned"] = {str(i): p for i, p in enumerate(predictions)}
    closed = all("references" not in r for r in test)
    results = score(cfg, test, systems, list(range(len(test))), closed)
    write_results(rd, results, {}, prediction_rows(test, systems, cfg.data.template))
    return rd


def wrong(label: str) -> str:
    return LABELS[(LABELS.index(label) + 1) % 3]


def test_table_and_mcnemar_between_runs_on_the_same_examples(tmp_path):
    test = labelled_test()
    good = [r["output"] if i % 10 else wrong(r["output"]) for i, r in enumerate(test)]        # 54/60 right
    poor = [r["output"] if i % 2 else wrong(r["output"]) for i, r in enumerate(test)]         # 30/60 right
    a = make_run(tmp_path, "good", test, good)
    b = make_run(tmp_path, "poor", test, poor, method="ia3")
    c = make_run(tmp_path, "good-again", test, good)
    text = compare.run([a.path, b.path, c.path])

    ci = a.metrics()["test"]["finetuned"]["ci"]["accuracy"]
    assert f"| good | lora | tiny | 0.9000 [{ci[0]:.3f}, {ci[1]:.3f}] |" in text
    assert "| poor | ia3 | tiny | 0.5000 [" in text
    rows = {(r["a"], r["b"]): r for r in (compare.paired(x, y) for x, y in
            [(compare.load(a.path), compare.load(b.path)), (compare.load(a.path), compare.load(c.path))])}
    clear, same = rows[("good", "poor")], rows[("good", "good-again")]
    assert clear["test"] == "mcnemar" and clear["n"] == 60 and clear["delta"] == pytest.approx(0.4)
    assert clear["p"] < 0.001 and same["p"] == 1.0 and same["delta"] == 0.0
    assert f"| good | poor | accuracy | mcnemar | 60 | +0.4000 | {clear['p']:.4g} |" in text
    assert "| good | good-again | accuracy | mcnemar | 60 | +0.0000 | 1 |" in text


def test_runs_on_different_examples_get_no_paired_test(tmp_path):
    a = make_run(tmp_path, "a", labelled_test(), [r["output"] for r in labelled_test()])
    other = labelled_test(prefix="other.csv")
    b = make_run(tmp_path, "b", other, [r["output"] for r in other])
    assert "| a | b | accuracy | - | 0 | - | no shared test examples |" in compare.run([a.path, b.path])


def test_generation_runs_use_the_paired_bootstrap_on_all_references(tmp_path):
    test = summary_test()
    close = [f"Tom gets {i} apples at the market." for i in range(30)]   # matches the second reference
    vague = ["Someone talks about fruit." for _ in range(30)]
    a, b = make_run(tmp_path, "close", test, close), make_run(tmp_path, "vague", test, vague)
    assert a.metrics()["test"]["finetuned"]["rouge1"] == pytest.approx(1.0)
    result = compare.paired(compare.load(a.path), compare.load(b.path))
    assert result["metric"] == "rouge1" and result["test"] == "paired_bootstrap"
    assert result["n"] == 30 and result["p"] < 0.05 and result["delta"] > 0.5


def test_cli_dispatch_prints_the_table(tmp_path):
    a = make_run(tmp_path, "a", labelled_test(), [r["output"] for r in labelled_test()])
    out = CliRunner().invoke(app, ["compare", str(a.path)])
    assert out.exit_code == 0, out.output
    assert "| a | lora | tiny | 1.0000 [1.000, 1.000] |" in out.output and "Paired tests" not in out.output


def test_unevaluated_folder_is_refused(tmp_path):
    cfg = config_from_dict({"name": "fresh", "runs_dir": str(tmp_path), "data": {"train": "x.jsonl"}})
    rd = RunDir.create(cfg)
    with pytest.raises(compare.CompareError, match="evaluate it first"):
        compare.run([rd.path])
    with pytest.raises(compare.CompareError, match="not a run folder"):
        compare.run([tmp_path / "nowhere"])
