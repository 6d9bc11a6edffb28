"""The official `openai` client against a real `tunelab serve` subprocess: models, chat, streaming chat,
completions, the classifications extension, and the errors a client branches on."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import INTENTS

LABELS = sorted(INTENTS)


def client(server, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key or server.key, max_retries=0, timeout=60)


def test_models_lists_each_run_with_its_parent(server):
    models = {m.id: m for m in client(server).models.list()}
    assert set(models) == {"intents", "encoder", "tiny-llama"}
    assert models["intents"].parent == "tiny-llama" and models["encoder"].parent == "tiny-bert"
    assert models["intents"].model_extra["labels"] == LABELS and "parent" not in models["tiny-llama"].model_extra
    assert client(server).models.retrieve("encoder").model_extra["serving"] == "classify"


def test_chat_answers_exactly_one_label(server):
    r = client(server).chat.completions.create(
        model="intents", messages=[{"role": "system", "content": "You label banking questions."},
                                   {"role": "user", "content": "where is my new card"}])
    assert r.choices[0].message.content in LABELS and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chat_is_the_same_answer_in_pieces(server):
    args = dict(model="tiny-llama", messages=[{"role": "user", "content": "Tell me about my card"}], max_tokens=6,
                extra_body={"ignore_eos": True})
    chunks = list(client(server).chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-2].choices[0].finish_reason == "length"
    whole = client(server).chat.completions.create(**args)
    assert streamed == whole.choices[0].message.content and whole.usage.completion_tokens == 6
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {server.key}"},
                      json={**{k: v for k, v in args.items() if k != "extra_body"}, "stream": True}, timeout=60) as r:
        lines = [l for l in r.iter_lines() if l]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_completions_free_text_and_label(server):
    c = client(server)
    r = c.completions.create(model="tiny-llama", prompt="my card", max_tokens=4, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
    labelled = c.completions.create(model="intents", prompt="my pin is blocked")
    assert labelled.choices[0].text in LABELS


def test_classifications_extension_for_sft_and_encoder_runs(server):
    body = {"input": ["where is my card", "my pin is blocked", {"text": "transfer pending"}]}
    for model in ("intents", "encoder"):
        r = httpx.post(server.url + "/v1/classifications", json={"model": model, **body},
                       headers={"Authorization": f"Bearer {server.key}"}, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1, 2]
        for d in data:
            assert set(d["scores"]) == set(LABELS) and sum(d["scores"].values()) == pytest.approx(1, abs=1e-5)
            assert d["label"] in LABELS
        if model == "encoder":   # a head answers its argmax
            assert all(d["label"] == max(d["scores"], key=d["scores"].get) for d in data)
    chat = client(server).chat.completions.create(model="intents", messages=[{"role": "user", "content": "where is my card"}],
                                                  extra_body={"return_label_probabilities": True})
    probs = chat.choices[0].model_extra["label_probabilities"]
    first = httpx.post(server.url + "/v1/classifications", json={"model": "intents", "input": "where is my card"},
                       headers={"Authorization": f"Bearer {server.key}"}, timeout=60).json()["data"][0]
    assert chat.choices[0].message.content == first["label"]
    assert probs == pytest.approx(first["scores"], abs=1e-6)


def test_wrong_key_and_unknown_model(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="tlk_000000000000_wrong").models.list()
    with pytest.raises(openai.NotFoundError) as e:
        client(server).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"


def test_free_text_model_is_not_a_classifier_and_single_input_runs_refuse_history(server):
    with pytest.raises(openai.BadRequestError, match="free text"):
        client(server).post("/classifications", body={"model": "tiny-llama", "input": "x"}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="exactly one user message"):
        client(server).chat.completions.create(model="intents", messages=[
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
