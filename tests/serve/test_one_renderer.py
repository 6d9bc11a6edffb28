"""One renderer: the token ids the server builds for the test records are the ones evaluation decoded,
and the server's answers are evaluation's predictions."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import httpx

from tunelab.pipeline import evaluate_run
from tunelab.core.rundir import RunDir
from tunelab.evaluate.decoding import Decoder


def test_server_prompts_are_evaluations_prompts(server, served_runs, tmp_path):
    # Re-evaluate a copy of the served run, recording what the fine-tuned system's decoder was given.
    copy = tmp_path / "intents"
    shutil.copytree(served_runs["intents"], copy)
    seen: list[list[list[int]]] = []
    real_run = Decoder.run

    def spy(self, prompts, *args, **kwargs):
        seen.append([list(p) for p in prompts])
        return real_run(self, prompts, *args, **kwargs)

    with mock.patch.object(Decoder, "run", spy):
        evaluate_run(RunDir.open(copy))
    evaluated = seen[0]   # the fine-tuned system runs first, on every test record in order
    test = RunDir(copy).data.splits()["test"]
    assert len(evaluated) == len(test) > 5
    preds = {r["id"]: r["prediction"] for r in RunDir(copy).predictions() if r["system"] == "finetuned"}
    for rec, ids in zip(test, evaluated):
        r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {server.key}"},
                       json={"model": "intents", "return_token_ids": True,
                             "messages": [{"role": "user", "content": rec["input"]["text"]}]}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prompt_token_ids"] == ids, rec["id"]
        assert body["choices"][0]["message"]["content"] == preds[rec["id"]], rec["id"]
