"""The config schema: one section per stage, every field documented once in its `Field(description=...)`.

CLI help and the JSON schema (`tunelab schema`, the dashboard's run form) are generated from these
models; unknown keys are rejected (`extra="forbid"`). Loading and overrides are in `load.py`.
"""

from __future__ import annotations

import codecs
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from tunelab.config._section import Section as _Section
from tunelab.config.monitor import MonitorConfig
from tunelab.config.serve import ServeConfig
from tunelab.config.tune import TuneConfig, check_space

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str) -> str:
    """A run name that stays inside the runs folder: letters, digits, `.`, `_`, `-`; no `..`.

    Raises:
        ValueError: the name is empty, a path, or starts with a dot or dash.
    """
    if not isinstance(name, str) or not RUN_NAME.match(name) or ".." in name:
        raise ValueError(f"run name {name!r} must be a plain folder name: letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '/' or '..'")
    return name


class DedupConfig(_Section):
    exact: bool = Field(True, description="Drop exact duplicates (after normalising case, punctuation and whitespace) within each split.")
    near: bool = Field(True, description="Drop near-duplicates (MinHash LSH over n-gram shingles) within each split.")
    threshold: float = Field(0.85, ge=0.0, le=1.0, description="Jaccard similarity at or above which two texts are near-duplicates.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations; more is more precise and slower.")
    shingle: Literal["char", "word"] = Field("char", description="Shingles compared for near-duplicates: character n-grams (robust for short texts) or word n-grams.")
    ngram: int = Field(5, ge=1, description="Shingle size in characters or words.")


class DataConfig(_Section):
    train: str = Field(..., description="Training data: a file, folder or glob (csv, tsv, jsonl, json, parquet, txt, md, html, pdf, docx). Relative paths resolve against the config file's folder.")
    validation: str | None = Field(None, description="Validation file. If absent, a stratified split of `val_fraction` is carved from train.")
    test: str | None = Field(None, description="Held-out test file. If absent, a stratified split of `test_fraction` is carved from train.")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "txt", "md", "html", "pdf", "docx"] = Field("auto", description="Input format; `auto` decides from the file extension.")
    schema_: Literal["auto", "prompt_completion", "messages", "alpaca", "sharegpt", "text_label", "text"] = Field("auto", alias="schema", description="Record shape; `auto` detects it and prints the decision.")
    input_columns: list[str] = Field(default_factory=list, description="Columns that feed the prompt template (for `{column}` placeholders). Empty: detected from the schema.")
    output_column: str | None = Field(None, description="Column holding the target (completion or label). Empty: detected from the schema.")
    group_by: str | None = Field(None, description="Column whose values never span two splits (e.g. a customer or document id).")
    template: str | None = Field(None, description="Prompt template with `{column}` placeholders, rendered as the user turn of the tokenizer's chat template.")
    system: str | None = Field(None, description="Optional system message placed before the user turn.")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Fraction of train carved out for validation when no validation file is given.")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Fraction of train carved out for test when no test file is given.")
    train_limit: int | None = Field(None, ge=1, description="Use at most this many training examples, sampled stratified by label (for quick runs).")
    max_length: int = Field(256, ge=8, description="Maximum tokens per example (prompt + completion); longer examples are truncated from the prompt's start and counted.")
    clean: list[str] = Field(default_factory=lambda: ["html", "unicode", "whitespace"], description="Cleaning operations in order: html, unicode, whitespace, headers_footers, boilerplate, dates, pii, length.")
    min_chars: int = Field(1, ge=0, description="Length filter: drop texts shorter than this many characters (with the `length` op).")
    max_chars: int | None = Field(None, ge=1, description="Length filter: drop texts longer than this many characters (with the `length` op).")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="De-duplication within each split.")
    leakage: Literal["refuse", "drop", "warn"] = Field("refuse", description="What to do when train shares exact or near-duplicate texts with validation/test: refuse to train, drop them from train, or warn.")
    chunk_tokens: int = Field(512, ge=16, description="task=pretrain: chunk documents into pieces of this many tokens.")
    chunk_overlap: int = Field(64, ge=0, description="task=pretrain: tokens shared by consecutive chunks.")
    encoding: str | dict[Literal["train", "validation", "test"], str] = Field("utf-8", description="Text encoding of the input files (e.g. latin-1, cp1252), or one per split ({train: utf-16, test: utf-8}); bytes that do not decode are reported by line. A file that starts with a byte-order mark (UTF-8, UTF-16, UTF-32) is read in the encoding the mark names, whatever this says.")
    delimiter: str = Field("auto", description="Field separator of csv/tsv files: `auto` takes the one the header line holds most often among , ; tab | (files as some tools export them, e.g. semicolon CSVs), or one character to force it.")
    json_key_column: str | None = Field(None, description="JSON files shaped {\"key\": [records], ...} (e.g. one file per intent, the intent as the key) are read as those records, each with its key in this column.")
    fields: dict[str, str] = Field(default_factory=dict, description="Columns computed from each record as read, for data whose text or label is not one flat column: name -> a template of {path} placeholders, a path being name, a.b, a[0] or a[*].b (a list of strings is joined without separator). E.g. {label: '{scenario}_{intent}'} or {text: '{data[*].text}'}. A record lacking a path is reported (file, line, field) and with errors: skip dropped.")
    errors: Literal["fail", "skip"] = Field("fail", description="Rows that cannot be read (malformed JSON, undecodable bytes, wrong field count, missing field): fail listing every problem, or skip them and count them as dropped.")
    date_order: Literal["mdy", "dmy"] = Field("mdy", description="`dates` op: how to read ambiguous dates like 03/05/2024.")
    boilerplate_share: float = Field(0.3, gt=0.0, le=1.0, description="`boilerplate` op: a line recurring in at least this share of documents (and at least 3) is removed.")


    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v):
        if v != "auto" and len(v) != 1:
            raise ValueError(f"delimiter must be 'auto' or one character (e.g. ';' or '\\t'), not {v!r}")
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v):
        from tunelab.data.fields import template_paths   # the path syntax lives with its reader

        for name, template in v.items():
            try:
                template_paths(template)
            except ValueError as e:
                raise ValueError(f"fields.{name}: {e}") from None
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v):
        for name in ([v] if isinstance(v, str) else v.values()):
            try:
                codecs.lookup(name)
            except LookupError:
                raise ValueError(f"unknown text encoding {name!r} (e.g. utf-8, utf-16, latin-1, cp1252)") from None
        return v


class ModelConfig(_Section):
    name: str = Field("smollm2-135m-instruct", description="An embedded model (`smollm2-135m-instruct`, `minilm-l6`), a local Hugging Face folder, a `.gguf` file, or a hub id on machines with network.")
    revision: str | None = Field(None, description="Hub revision (only for hub ids).")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder (off by default: it runs arbitrary code).")
    pooling: Literal["last", "mean"] = Field("last", description="task=classification on a decoder: what the head reads, the last real token's hidden state (`last`, what transformers does) or the mean over the example's real tokens (`mean`; on Banking77 a linear probe on SmolLM2's states: 0.89 vs 0.67 at layer 10).")
    layers: int | None = Field(None, ge=1, description="task=classification on a decoder: keep only the first this many transformer layers under the classification head (the layers above are never loaded into the trained model; baselines still prompt the whole base model). None = all.")


class MethodConfig(_Section):
    name: Literal["full", "freeze", "gradual_unfreeze", "lora", "dora", "rslora", "qlora", "adapter", "ia3", "prompt_tuning"] = Field("lora", description="Fine-tuning method.")
    r: int = Field(16, ge=1, description="LoRA/DoRA/rsLoRA/QLoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) for rslora).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input; 0 skips the extra pass (faster on CPU).")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear` (LoRA family: every Linear except the output head; ia3: PEFT's per-architecture default of keys, values and MLP output).")
    trainable_layers: int | None = Field(None, ge=0, description="freeze: train the head plus the top k transformer layers (None or 0 = head only). The head is everything after the layer stack: final norm, pooler, lm_head or classifier.")
    trainable_regex: str | None = Field(None, description="freeze: parameters whose names match this regex are trained; overrides trainable_layers.")
    unfreeze_every: int = Field(100, ge=1, description="gradual_unfreeze: unfreeze one more layer group every this many steps (or epochs, see unfreeze_unit).")
    unfreeze_unit: Literal["steps", "epochs"] = Field("steps", description="gradual_unfreeze: unit of unfreeze_every.")
    layer_lr_decay: float = Field(1.0, gt=0.0, le=1.0, description="Layer-wise learning-rate decay: layer i below the top gets lr * decay**i (1.0 = off).")
    adapter_size: int = Field(64, ge=1, description="adapter: bottleneck width.")
    adapter_kind: Literal["houlsby", "pfeiffer"] = Field("pfeiffer", description="adapter: Houlsby (after attention and MLP) or Pfeiffer (after MLP only).")
    num_virtual_tokens: int = Field(20, ge=1, description="prompt_tuning: number of trained virtual tokens.")
    freeze_below: int | None = Field(None, ge=1, description="lora/dora/rslora: layers 0..K-1 get no adapter and stay frozen. For task=classification their output does not change during training, so it is computed once per example and cached, and each step runs only layers K and above (same logits and loss as without the cache). None = adapt every layer.")


class TrainConfig(_Section):
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(1.0, description="Passes over the training set (ignored when max_steps is set). `auto`: decided from the data (train/auto.py): about 27,000 examples seen (more with many classes: ~300 per class), at least one epoch and at most 10; the log and metrics.json `train.auto` say what was decided.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    time_budget: float | None = Field(None, gt=0, description="Wall-clock seconds for the training loop. The first steps are timed (validation and saves included) and, when the planned steps would take longer, training ends at the last step that fits, with the learning-rate schedule re-aimed to end there; re-measured every 50 steps (the load of a shared machine changes). Never trains beyond the plan. The decision and its numbers are logged and kept in metrics.json `train.time_budget`. None = no budget.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    batching: Literal["padded", "packed", "shared_prefix"] = Field("shared_prefix", description="How a micro-batch is laid out: right-padded rows; one padding-free packed row; or packed with the prompt prefix the batch's examples share computed once (same loss and gradients, less work).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step; the loss is normalised by supervised tokens across the window.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Fraction of steps for linear warm-up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    scheduler: Literal["linear", "cosine", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Literal["auto", "bf16", "fp32", "fp16"] = Field("auto", description="`auto`: bf16 autocast on CPUs with AVX512-BF16/AMX and bf16-capable GPUs, fp32 otherwise; fp16 only on GPUs.")
    eval_every: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(50, description="Compute validation loss every this many optimizer steps; `auto`: about 8 times in the run.")
    eval_examples: int | None = Field(256, ge=1, description="Validation loss is computed on a fixed seeded subset of at most this many validation examples (None = all).")
    patience: int | None = Field(3, ge=1, description="Early stopping: stop after this many validations without improvement (None = off).")
    min_delta: float = Field(0.0, ge=0.0, description="Early stopping: smallest validation-loss decrease that counts as improvement.")
    zero_loss_steps: int = Field(20, ge=1, description="Stop when this many consecutive steps log a loss of exactly zero.")
    log_every: int = Field(5, ge=1, description="Log training loss every this many optimizer steps.")
    save_every: int | None = Field(100, ge=1, description="Save a resumable checkpoint (weights or adapter, optimizer, scheduler, RNG states, data position) every this many optimizer steps into `checkpoints/`, for `--resume` after a crash (None = only when stopped by SIGTERM/SIGINT). Make it a multiple of log_every so the first loss logged after a resume averages the same steps as without one. Checkpoints are removed when training completes.")
    keep_checkpoints: int = Field(2, ge=1, description="Keep only this many newest complete checkpoints (older ones are deleted as new ones are saved).")
    seed: int = Field(0, description="Seed for data order, splits and initialisation.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train: `auto` picks CUDA when available.")
    stall_minutes: float | None = Field(30.0, gt=0, description="Stall watchdog: when training makes no progress (no micro-batch, optimizer step, validation or save) for this many minutes, print every process's stack and stop with the likely causes (a deadlocked collective, a dead rank, data imbalance, the network). None = off.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list, description="Extra tracking sinks fed by the Trainer's integrations (metrics.jsonl is always written): tensorboard, mlflow (MLFLOW_TRACKING_URI or a sqlite store in the runs folder), wandb (offline unless WANDB_MODE says otherwise).")

    @field_validator("epochs", "eval_every", mode="before")
    @classmethod
    def _number_or_auto(cls, v, info):
        # One clear message instead of one per branch of the union.
        if v == "auto":
            return v
        whole = info.field_name == "eval_every"
        try:
            number = None if isinstance(v, bool) else float(v)
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number) or number <= 0 or (whole and not number.is_integer()):
            raise ValueError(f"must be {'a whole number of steps' if whole else 'a finite number of passes'} above 0 "
                             "or 'auto'")
        return int(number) if whole else number


class EvalConfig(_Section):
    baselines: list[Literal["zero_shot", "few_shot"]] = Field(default_factory=lambda: ["zero_shot", "few_shot"], description="Baselines of the same base model measured on the same test examples.")
    few_shot_k: int = Field(5, ge=1, description="Training examples shown in the few-shot prompt.")
    baseline_per_class: int | None = Field(None, ge=1, description="Evaluate baselines on a fixed stratified subset with this many test examples per class. None (default): sized automatically, see baseline_ci_width and baseline_budget_s.")
    baseline_ci_width: float = Field(0.05, gt=0.0, lt=0.5, description="Baselines on a label set that are too slow for the whole test set run on a stratified subset large enough for a 95% interval of this half-width on their accuracy (0.05 = +-5 points; n from the Wilson interval at accuracy 0.5, the widest case).")
    baseline_budget_s: float = Field(600.0, gt=0, description="Seconds all baselines together may take, estimated from the fine-tuned model's measured time per test example and each baseline's prompt length: the whole test set when it fits (e.g. encoder baselines), else the subset baseline_ci_width asks for, cut to what fits (the log says how wide its intervals then are).")
    max_test: int | None = Field(None, ge=1, description="Evaluate at most this many test examples (seeded stratified subset).")
    batch_size: int = Field(16, ge=1, description="Evaluation batch size.")
    constrained: Literal["auto", "on", "off"] = Field("auto", description="Constrain decoding to the label set; `auto`: on when train outputs form a closed set.")
    max_labels: int = Field(200, ge=2, description="`auto` treats outputs as a closed label set when they take at most this many distinct values.")
    max_new_tokens: int = Field(64, ge=1, description="Bound on generated tokens for free generation.")
    metrics: list[str] | None = Field(None, description="Override the metrics chosen from the task (e.g. [accuracy, f1_macro]).")
    bootstrap_samples: int = Field(1000, ge=100, description="Bootstrap resamples for the 95% intervals and the paired bootstrap test.")
    few_shot_selection: Literal["fixed", "similar"] = Field("fixed", description="Few-shot examples: a fixed seeded sample of training examples, or the k most similar to each test input.")
    time_budget_s: float | None = Field(None, gt=0, description="Wall-clock budget for generation; when the full test set would exceed it, a fixed seeded subset is evaluated and the report says so.")
    references: list[str] | None = Field(None, description="Test-file columns holding reference outputs (e.g. [summary1, summary2, summary3]): each prediction is scored against all of them (ROUGE/exact match: best one; BLEU/chrF: all). Default: the output column.")
    forgetting: bool = Field(True, description="Run the forgetting probe: perplexity and base-vs-tuned KL divergence on a bundled general-English text.")
    forgetting_tokens: int = Field(2048, ge=64, description="Tokens of the general-English probe text to score (the budget of the forgetting probe; ~1 min for base + tuned SmolLM2-135M on 2 CPU cores).")
    forgetting_max: float | None = Field(None, ge=0.0, description="Fail the run when the probe perplexity of the fine-tuned model exceeds the base model's by more than this fraction (0.2 = +20%); None = report only.")


class Config(_Section):
    name: str = Field("run", description="Run name: outputs go to `runs/<name>/`.")
    task: Literal["sft", "classification", "pretrain"] = Field("sft", description="sft: causal-LM completion-only loss; classification: sequence-classification head; pretrain: plain LM loss on raw text.")
    runs_dir: str = Field("runs", description="Folder holding run folders.")
    data: DataConfig = Field(..., description="Where the data is and how it becomes training examples.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    method: MethodConfig = Field(default_factory=MethodConfig, description="Fine-tuning method.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation and validation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation and baselines.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyper-parameter search (`tunelab tune`).")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Serving (`tunelab serve`).")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Production monitoring (`tunelab monitor`).")
    base_dir: str = Field(".", description="Folder that relative data paths resolve against (set to the config file's folder on load).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("tune")
    @classmethod
    def _space(cls, v: TuneConfig) -> TuneConfig:
        check_space(v.space, cls)
        return v

    def resolve(self, path: str | None) -> Path | None:
        """Resolve a data path against `base_dir`."""
        if path is None:
            return None
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name
