"""Rendering: labels cover exactly the completion and its end-of-turn token; the guards fire."""

import pytest

from tests.tiny import tiny_tokenizer
from tunelab.train.collate import make_collator
from tunelab.config import config_from_dict
from tunelab.train.render import IGNORE, Renderer, RenderError, check_batch, encode_split


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def cfg(**data):
    return config_from_dict({"data": {"train": "x.csv", "template": "Intent of: {text}", **data}})


def rec(text="I lost my card.", out="card", i=1):
    return {"id": f"train.csv:{i}", "input": {"text": text}, "output": out}


def test_labels_cover_exactly_completion_and_eos(tok):
    r = Renderer(tok, cfg())
    enc = r.encode(rec())
    prompt = tok.apply_chat_template([{"role": "user", "content": "Intent of: I lost my card."}],
                                     tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    supervised = enc.labels[n_prompt:]
    assert IGNORE not in supervised
    assert supervised == enc.input_ids[n_prompt:]
    assert tok.decode(supervised) == "card<|im_end|>"
    assert supervised[-1] == tok.eos_token_id


def test_system_message_is_in_prompt_not_labels(tok):
    enc = Renderer(tok, cfg(system="You classify banking queries.")).encode(rec())
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou classify banking queries.<|im_end|>")
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == "card<|im_end|>"


def test_truncation_is_counted_and_keeps_the_answer(tok):
    long = " ".join(["My transfer has not arrived yet."] * 40)
    out, stats = encode_split(Renderer(tok, cfg(max_length=48)), [rec(long), rec()], "train")
    assert stats.truncated == 1 and stats.truncated_rows == ["train.csv:1"]
    assert len(out[0]["input_ids"]) == 48
    assert tok.decode([t for t in out[0]["labels"] if t != IGNORE]) == "card<|im_end|>"


def test_zero_supervised_tokens_names_the_row(tok):
    with pytest.raises(RenderError, match=r"train.csv:7: zero supervised tokens"):
        encode_split(Renderer(tok, cfg()), [rec(), rec(out=None, i=7)], "train")


def test_eos_guard_fires_when_answer_cannot_fit(tok):
    long_answer = " ".join(["transfer"] * 80)
    with pytest.raises(RenderError, match=r"train.csv:3: the end-of-turn/EOS token is not supervised"):
        encode_split(Renderer(tok, cfg(max_length=32)), [rec(), rec(out=long_answer, i=3)], "train")


def test_eos_guard_catches_pad_equals_eos_collator(tok):
    """The classic trap: pad == eos and a collator that masks every pad id also masks the real EOS."""
    r = Renderer(tok, cfg())
    out, _ = encode_split(r, [rec(), rec("How do I activate my new card?", "card", 2)], "train")
    good = make_collator(tok.eos_token_id, packing=False)(out)   # pad id == eos id
    check_batch(good, r.end_ids, 2)                          # ours masks by position: fine
    bad = {k: v.clone() for k, v in good.items()}
    bad["labels"][bad["input_ids"] == tok.eos_token_id] = IGNORE  # the naive collator
    with pytest.raises(RenderError, match="end-of-turn/EOS token is not supervised"):
        check_batch(bad, r.end_ids, 2)


def test_template_placeholder_missing(tok):
    with pytest.raises(RenderError, match=r"uses \{query\} but the record has only the columns \['text'\]"):
        Renderer(tok, cfg(template="Q: {query}")).encode(rec())


def test_messages_records_supervise_the_last_assistant_turn(tok):
    r = Renderer(tok, cfg())
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Block my card"}, {"role": "assistant", "content": "Done"}]
    enc = r.encode({"id": "c.jsonl:1", "messages": msgs})
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == "Done<|im_end|>"
    assert "Hello" in tok.decode(enc.input_ids)
