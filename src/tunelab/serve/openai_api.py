"""The OpenAI-compatible API under /v1: models, chat completions, completions (both streamable with SSE),
and the `classifications` extension. Every route needs an `api` key within its rate (router dependency).

Handlers validate, build the prompt off the event loop (tokenizing), queue a `Job` on the engine and
await it; what they learn about the request (model, tokens, label, text) goes on `request.state`,
from which the accounting middleware writes metrics and the request log.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunelab.serve.engine import Job
from tunelab.serve.errors import ApiError, error_kind
from tunelab.serve.ratelimit import rate_limit
from tunelab.serve.schemas import (AssistantMessage, ChatChoice, ChatCompletion, ChatRequest, Classification,
                                   ClassificationList, ClassificationRequest, Completion, CompletionChoice,
                                   CompletionRequest, ModelCard, ModelList, Usage)

router = APIRouter(prefix="/v1", dependencies=[Depends(rate_limit)])


def _st(request: Request):
    return request.app.state.tunelab


def card(m) -> ModelCard:
    return ModelCard(id=m.id, created=m.created, parent=m.parent, root=m.root, task=m.task, serving=m.serving,
                     labels=m.labels)


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request):
    st = _st(request)
    if not st.ready:
        st.model("")   # answers 503 while loading
    return ModelList(data=[card(m) for m in st.models.values()])


@router.get("/models/{model:path}", response_model=ModelCard, response_model_exclude_none=True)
async def get_model(model: str, request: Request):
    return card(_st(request).model(model))


# ---------------------------------------------------------------- shared steps


def _max_tokens(body, cfg) -> int:
    unsupported = body.neutral()
    if unsupported:
        raise ApiError(400, f"{unsupported}={getattr(body, unsupported)!r} is not supported: tunelab decodes greedily, "
                       "as evaluation did (omit it or send its neutral value)", "unsupported_parameter", unsupported)
    n = (getattr(body, "max_completion_tokens", None) or body.max_tokens
         or min(cfg.default_max_tokens, cfg.max_tokens_limit))
    if n > cfg.max_tokens_limit:
        raise ApiError(400, f"max_tokens={n} is above this server's limit of {cfg.max_tokens_limit} "
                       "(serve.max_tokens_limit)", "invalid_max_tokens", "max_tokens")
    return n


def _stop_check(served, stops: list[str]):
    if not stops:
        return None
    return lambda ids: any(s in served.tokenizer.decode(ids, skip_special_tokens=True) for s in stops)


async def _submit(request: Request, served, prompt, text: str, max_tokens: int, body, want_probs: bool) -> Job:
    """Count and bound the prompt, note it for the log, and queue the job that answers it."""
    st = _st(request)
    n = await run_in_threadpool(served.count_tokens, prompt) if isinstance(prompt, str) else len(prompt)
    if n > st.cfg.max_prompt_tokens:
        raise ApiError(400, f"the prompt has {n} tokens after the model's template; this server accepts at most "
                       f"{st.cfg.max_prompt_tokens} (serve.max_prompt_tokens)", "context_length_exceeded", "messages")
    request.state.prompt_tokens = getattr(request.state, "prompt_tokens", 0) + n
    before = getattr(request.state, "input", None)
    request.state.input = text if before is None else f"{before}\n{text}"
    if served.serving == "classify":
        job = Job(served, "head", prompt)
    elif served.trie is not None:
        job = Job(served, "labels" if want_probs else "generate", prompt, constrained=not want_probs)
    else:
        job = Job(served, "generate", prompt, max_tokens, ignore_eos=getattr(body, "ignore_eos", False),
                  stop_text=_stop_check(served, body.stops() if hasattr(body, "stops") else []))
    if getattr(body, "stream", False):
        job.stream = asyncio.Queue()
    return st.engine.submit(job)


async def _wait(request: Request, job: Job):
    st = _st(request)
    left = st.cfg.request_timeout_s - (time.monotonic() - request.state.t0)
    try:
        return await asyncio.wait_for(asyncio.shield(job.future), max(left, 0.001))
    except asyncio.TimeoutError:
        job.cancelled = True
        raise ApiError(504, f"the request did not finish within {st.cfg.request_timeout_s:g}s "
                       "(serve.request_timeout_s)", "timeout") from None
    except asyncio.CancelledError:
        job.cancelled = True   # the client went away: stop decoding its row
        raise


def _note(request: Request, served, job: Job, outs: list) -> None:
    """Record what the request log and metrics need on the request."""
    s = request.state
    s.completion_tokens = sum(len(o.tokens) for o in outs)
    s.first_token = job.first_token
    s.output = "\n".join(o.text for o in outs)
    if len(outs) == 1 and outs[0].label is not None:
        s.label = outs[0].label
        probs = outs[0].probabilities
        s.label_probability = round(probs[outs[0].label], 6) if probs else None


def _usage(request: Request) -> Usage:
    p, c = request.state.prompt_tokens, request.state.completion_tokens
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


# ---------------------------------------------------------------- chat and completions


@router.post("/chat/completions", response_model=ChatCompletion, response_model_exclude_none=True)
async def chat_completions(body: ChatRequest, request: Request):
    st = _st(request)
    served = st.model(body.model)
    request.state.model, request.state.stream = served.id, body.stream
    max_tokens = _max_tokens(body, st.cfg)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt, text = await run_in_threadpool(served.chat_prompt, messages)
    job = await _submit(request, served, prompt, text, max_tokens, body, body.return_label_probabilities)
    rid, created = f"chatcmpl-{request.state.request_id}", int(time.time())
    if body.stream:
        return _sse(_stream(request, served, job, body, rid, created, chat=True))
    out = await _wait(request, job)
    out.text = _cut(out.text, body.stops())
    _note(request, served, job, [out])
    choice = ChatChoice(index=0, message=AssistantMessage(content=out.text), finish_reason=out.finish,
                        label_probabilities=out.probabilities if body.return_label_probabilities else None)
    return ChatCompletion(id=rid, created=created, model=served.id, choices=[choice], usage=_usage(request),
                          prompt_token_ids=prompt if body.return_token_ids and isinstance(prompt, list) else None)


def _completion_prompt(served, text: str, raw: bool):
    if raw or served.is_base or served.serving == "score":
        return served.raw_prompt(text), text
    return served.input_prompt(text)


@router.post("/completions", response_model=Completion, response_model_exclude_none=True)
async def completions(body: CompletionRequest, request: Request):
    st = _st(request)
    served = st.model(body.model)
    request.state.model, request.state.stream = served.id, body.stream
    max_tokens = _max_tokens(body, st.cfg)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not texts or len(texts) > st.cfg.max_batch_size:
        raise ApiError(400, f"prompt: send 1 to {st.cfg.max_batch_size} prompts", "invalid_prompt", "prompt")
    if body.stream and len(texts) > 1:
        raise ApiError(400, "stream one prompt at a time", "invalid_prompt", "prompt")
    if body.echo or body.suffix:
        raise ApiError(400, "echo and suffix are not supported", "unsupported_parameter", "echo" if body.echo else "suffix")
    built = [await run_in_threadpool(_completion_prompt, served, t, body.raw) for t in texts]
    jobs = [await _submit(request, served, p, t, max_tokens, body, body.return_label_probabilities) for p, t in built]
    rid, created = f"cmpl-{request.state.request_id}", int(time.time())
    if body.stream:
        return _sse(_stream(request, served, jobs[0], body, rid, created, chat=False))
    outs = [await _wait(request, j) for j in jobs]
    for o in outs:
        o.text = _cut(o.text, body.stops())
    _note(request, served, jobs[0], outs)
    choices = [CompletionChoice(index=i, text=o.text, finish_reason=o.finish,
                                label_probabilities=o.probabilities if body.return_label_probabilities else None)
               for i, o in enumerate(outs)]
    ids = [p for p, _ in built] if body.return_token_ids and all(isinstance(p, list) for p, _ in built) else None
    return Completion(id=rid, created=created, model=served.id, choices=choices, usage=_usage(request),
                      prompt_token_ids=ids)


@router.post("/classifications", response_model=ClassificationList)
async def classifications(body: ClassificationRequest, request: Request):
    """Extension: a label and every label's probability for each raw input (label-set sft and classification runs)."""
    st = _st(request)
    served = st.model(body.model)
    request.state.model = served.id
    if served.serving != "classify" and served.trie is None:
        raise ApiError(400, f"model {served.id!r} answers free text, not a label set: use /v1/chat/completions",
                       "not_a_classifier", "model")
    inputs = body.inputs()
    if not inputs or len(inputs) > st.cfg.max_queue:
        raise ApiError(400, f"input: send 1 to {st.cfg.max_queue} inputs", "invalid_input", "input")
    jobs = []
    for value in inputs:
        prompt, text = await run_in_threadpool(served.input_prompt, value)
        jobs.append(await _submit(request, served, prompt, text, 1, body, want_probs=True))
    outs = [await _wait(request, j) for j in jobs]
    _note(request, served, jobs[0], outs)
    data = [Classification(index=i, label=o.label, scores=o.probabilities) for i, o in enumerate(outs)]
    return ClassificationList(id=f"clf-{request.state.request_id}", model=served.id, data=data, usage=_usage(request))


async def answer(request: Request, served, prompt, text: str, max_tokens: int, want_probs: bool = False):
    """Queue one prompt and await its outcome, noted for the log (the web pages answer through this)."""
    from types import SimpleNamespace

    body = SimpleNamespace(ignore_eos=False, stops=lambda: [], stream=False)
    job = await _submit(request, served, prompt, text, max_tokens, body, want_probs)
    out = await _wait(request, job)
    request.state.model = served.id
    _note(request, served, job, [out])
    return out


# ---------------------------------------------------------------- streaming


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chunk(rid: str, created: int, model: str, chat: bool, text: str | None, finish: str | None,
           first: bool = False) -> str:
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        doc = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        doc = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"


async def _stream(request: Request, served, job: Job, body, rid: str, created: int, chat: bool) -> AsyncIterator[str]:
    """SSE events: text deltas as tokens come, the finish reason, usage if asked, then `data: [DONE]`."""
    st, model = _st(request), served.id
    stops = body.stops()
    hold = max((len(s) for s in stops), default=1) - 1     # never send text a stop sequence may still cut
    labels = served.serving == "classify" or served.trie is not None   # a label is sent whole, at the end
    sent, tokens = "", []
    if chat:
        yield _chunk(rid, created, model, chat, None, None, first=True)
    try:
        while True:
            left = st.cfg.request_timeout_s - (time.monotonic() - request.state.t0)
            try:
                ids = await asyncio.wait_for(job.stream.get(), max(left, 0.001))
            except asyncio.TimeoutError:
                job.cancelled = True
                raise ApiError(504, "the request timed out while streaming", "timeout") from None
            if ids is None:
                break
            tokens += ids
            if labels:
                continue
            text = served.tokenizer.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue   # a character split across tokens: wait for its last byte
            text = _cut(text, stops)
            if len(text) - hold > len(sent):
                yield _chunk(rid, created, model, chat, text[len(sent):len(text) - hold], None)
                sent = text[:len(text) - hold]
        out = job.future.result()
    except ApiError as e:
        request.state.error = error_kind(e.status, e.code)
        yield f"data: {json.dumps(e.body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    finally:
        job.cancelled = True if not job.future.done() else job.cancelled
    _note(request, served, job, [out])
    final = _cut(out.text, stops)
    if final[len(sent):]:
        yield _chunk(rid, created, model, chat, final[len(sent):], None)
    yield _chunk(rid, created, model, chat, None, out.finish)
    if body.stream_options and body.stream_options.include_usage:
        usage = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                 "model": model, "choices": [], "usage": _usage(request).model_dump()}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


def _cut(text: str, stops: list[str]) -> str:
    """`text` up to the first stop sequence (the stop sequence itself is not returned, as OpenAI does)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[:min(cuts)] if cuts else text
