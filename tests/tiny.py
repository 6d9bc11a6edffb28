"""Tiny random models and a tiny tokenizer, built locally so tests never touch the network.

Every builder saves a complete Hugging Face folder (config, safetensors weights, tokenizer with a
ChatML chat template) and returns its path, so the folder can be used anywhere a `model.name` is
accepted. Models are random (seeded): only their shapes and plumbing are realistic.

    path = tiny_llama(tmp_path / "llama")                     # LlamaForCausalLM
    path = tiny_llama(tmp_path / "llama-cls", num_labels=3)   # LlamaForSequenceClassification
    path = tiny_bert_classifier(tmp_path / "bert")            # BertForSequenceClassification
    model = AutoModelForCausalLM.from_pretrained(path)
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                          LlamaForSequenceClassification, PreTrainedModel, PreTrainedTokenizerFast)

# Banking-flavoured sentences: enough for BPE merges and for a few batches of training data.
SENTENCES = [
    "I am still waiting on my card.",
    "How do I activate my new card?",
    "My transfer has not arrived yet.",
    "Why was I charged a fee for this transfer?",
    "Can I change my PIN at an ATM?",
    "The exchange rate on my payment looks wrong.",
    "I lost my card, please block it.",
    "How long does a bank transfer take?",
    "Is there a limit on top ups?",
    "My top up failed, what should I do?",
    "Please cancel the payment I made yesterday.",
    "Where can I see my account statement?",
]

LABELS = ["card", "transfer", "other"]

# A tiny intent data set (three Banking77 intents, six queries each) for runs that are trained, evaluated,
# served and shown in the dashboard by the tests.
INTENTS = {
    "card_arrival": ["my card has not arrived", "where is my new card", "card delivery is late",
                     "I am still waiting on my card", "track my card please", "new card never came"],
    "transfer_pending": ["my transfer has not arrived", "why is my transfer pending", "the transfer failed",
                         "money sent to a friend is missing", "cancel my bank transfer", "transfer fee is wrong"],
    "pin_blocked": ["I forgot my pin", "my pin is blocked", "change my pin at the atm", "pin not working",
                    "reset the pin of my card", "wrong pin three times"],
}

SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]

# The ChatML template SmolLM2-Instruct ships (system turn optional), so rendering code is exercised
# with the same markup as the embedded default model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64


def tiny_tokenizer(path: Path | None = None, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `SENTENCES` with ChatML specials; saved to `path` if given.

    Byte-level BPE encodes any text (no unknown tokens), so the tokenizer works on arbitrary data.
    `<|im_end|>` is the EOS token and `<pad>` the padding token (id 0).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML_TEMPLATE
    if path is not None:
        fast.save_pretrained(path)
    return fast


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def llama_config(tokenizer: PreTrainedTokenizerFast, num_labels: int | None = None, tie: bool = False,
                 layers: int = LAYERS) -> LlamaConfig:
    """A 2-layer Llama config sized for tests (hidden 32, grouped-query attention 4 heads / 2 KV heads)."""
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                      num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=tie,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.bos_token_id)
    if num_labels is not None:
        cfg.num_labels = num_labels
        cfg.id2label = dict(enumerate(LABELS[:num_labels])) if num_labels <= len(LABELS) else cfg.id2label
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return cfg


def tiny_llama(path: Path, num_labels: int | None = None, tie: bool = False, seed: int = 0,
               layers: int = LAYERS) -> Path:
    """Save a random LlamaForCausalLM (or LlamaForSequenceClassification when `num_labels`) + tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = llama_config(tokenizer, num_labels, tie, layers)
    model = LlamaForCausalLM(cfg) if num_labels is None else LlamaForSequenceClassification(cfg)
    if num_labels is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return _save(model, tokenizer, path)


def tiny_bert_classifier(path: Path, num_labels: int = 3, seed: int = 0) -> Path:
    """Save a random 2-layer BertForSequenceClassification (hidden 32, dropout off) + tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    # Dropout off: tests compare outputs across runs and exports; randomness would hide real differences.
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                     num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=256,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    cfg.id2label = dict(enumerate(LABELS[:num_labels])) if num_labels <= len(LABELS) else cfg.id2label
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return _save(BertForSequenceClassification(cfg), tokenizer, path)


def tiny_examples(tokenizer: PreTrainedTokenizerFast, task: str, n: int = 8, length: int = 24) -> list[dict]:
    """`n` fixed-length training features for `task` (sft/pretrain: LM labels; classification: a class id).

    Padded to `length` so the default collator can stack them; padding is masked out of the loss.
    """
    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        enc = tokenizer(text, truncation=True, max_length=length, padding="max_length")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if task == "classification":
            labels = i % len(LABELS)
        else:
            labels = [t if m else -100 for t, m in zip(ids, mask)]
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out
