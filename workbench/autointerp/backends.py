"""Chat backends for explainers and scorers: one protocol, an OpenAI-compatible HTTP client and a
local Hugging Face model, both behind a persistent cache, so a re-run of a job makes no calls.

* :class:`OpenAIBackend`: any server speaking OpenAI's chat completions (OpenAI, vLLM, ollama,
  llama.cpp's server) over plain HTTP, stdlib only. The API key is read from a named environment
  variable at each call and goes nowhere else: not into the object, its repr, the cache, or any
  error message. Requests run on a thread pool; connection errors, timeouts, 429 and 5xx are
  retried with exponential backoff and jitter (a ``Retry-After`` header is honoured); any other
  4xx fails at once with the server's message.
* :class:`LocalBackend`: a chat model run by transformers with its chat template, greedy (or
  seeded sampling when a retry asks for a temperature); the top log-probabilities of each
  generated step come from its logits. ``"smollm2-135m"`` is the embedded model. A final
  assistant message is continued, not answered (``continues_final_message``): a prefilled answer
  keeps a small model on the format; the completion holds only what was generated.

The cache is a folder with one small JSON file per request, written atomically (concurrent
writers of the same key write the same answer; a crash leaves no half file). Its key hashes the
backend kind, base URL, model, messages, ``max_tokens``, ``temperature``, ``logprobs`` and the
request's ``attempt``: a scorer that could not parse an answer asks again with the next attempt,
so a bad answer in the cache is not replayed forever. ``backend.usage`` tallies requests made,
answers served from the cache, tokens, and the cost where prices per million tokens are given.

Example::

    backend = make_backend("openai", "gpt-4o-mini", api_key_env="OPENAI_API_KEY")
    reply = backend.complete([{"role": "user", "content": "Say hi."}], max_tokens=5, logprobs=5)
    reply.text, reply.top_logprobs, backend.usage
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from workbench.files import write_json
from workbench.progress import progress_bar

__all__ = ["Backend", "BackendError", "Completion", "LocalBackend", "OpenAIBackend", "Request",
           "default_cache_dir", "make_backend"]


class BackendError(RuntimeError):
    """A request that failed: a 4xx other than 429, or a failure that outlasted every retry."""


@dataclass
class Completion:
    """One chat completion."""

    text: str
    """The generated text."""
    top_logprobs: list[dict[str, float]] | None = None
    """Per generated token, its top alternatives as token -> natural-log probability; None when the
    backend gave no log-probabilities (never an error)."""
    tokens: list[str] | None = None
    """The generated tokens, in order, when ``top_logprobs`` is given (their concatenation is
    normally ``text``; scorers use it to find the tokens behind each answer)."""
    prompt_tokens: int = 0
    """Tokens of the prompt, as the backend counted them (0 if it did not say)."""
    completion_tokens: int = 0
    """Tokens generated."""
    cached: bool = False
    """True when this answer came from the cache, not from a fresh request."""


@dataclass(frozen=True)
class Request:
    """One request for :meth:`Backend.complete_many`; the fields are :meth:`Backend.complete`'s arguments."""

    messages: list[dict]
    """Chat messages, ``{"role": ..., "content": ...}``."""
    max_tokens: int
    """Most tokens to generate."""
    temperature: float = 0.0
    """0 for greedy decoding."""
    logprobs: int | None = None
    """How many top log-probabilities to return per generated token; None for none."""
    attempt: int = 0
    """Retry counter: part of the cache key, so a retry after a bad answer is a fresh request."""


class Backend(Protocol):
    name: str
    """``kind:model``, e.g. ``"openai:gpt-4o-mini"`` or ``"local:smollm2-135m"``."""

    @property
    def usage(self) -> dict[str, float]: ...

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 logprobs: int | None = None, attempt: int = 0) -> Completion: ...

    def complete_many(self, requests: Sequence[Request], *, progress: bool = False,
                      desc: str | None = None) -> list[Completion]: ...


def default_cache_dir() -> Path:
    """``$WORKBENCH_HOME/autointerp-cache`` (default ``~/.cache/workbench/autointerp-cache``)."""
    return Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".cache" / "workbench")) / "autointerp-cache"


class _CachedBackend:
    """What both backends share: the cache, the usage tally and the batch method."""

    kind: str = ""
    concurrency: int = 1
    continues_final_message: bool = False
    """Whether a final assistant message is continued (prefilled) rather than answered anew."""

    def __init__(self, model: str, cache_dir: str | Path | None, prompt_price: float | None,
                 completion_price: float | None) -> None:
        self.model = model
        self.name = f"{self.kind}:{model}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.prompt_price = prompt_price
        self.completion_price = completion_price
        self._lock = threading.Lock()
        self._usage = {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}

    @property
    def usage(self) -> dict[str, float]:
        """Requests made, answers from the cache, tokens of the requests made, and ``cost`` (in the
        prices' currency) when prices per million tokens were given."""
        with self._lock:
            usage: dict[str, float] = dict(self._usage)
        if self.prompt_price is not None or self.completion_price is not None:
            usage["cost"] = (usage["prompt_tokens"] * (self.prompt_price or 0.0)
                             + usage["completion_tokens"] * (self.completion_price or 0.0)) / 1e6
        return usage

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 logprobs: int | None = None, attempt: int = 0) -> Completion:
        """One chat completion, from the cache when this exact request was answered before."""
        request = Request(messages, max_tokens, temperature, logprobs, attempt)
        cached = self._lookup(request)
        if cached is not None:
            return cached
        completion = self._generate(request)
        self._store(request, completion)
        return completion

    def _lookup(self, request: Request) -> Completion | None:
        """The cached answer to ``request`` (counted as cached), or None."""
        try:
            cached = Completion(**json.loads(self._cache_path(request).read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None
        cached.cached = True
        with self._lock:
            self._usage["cached"] += 1
        return cached

    def _store(self, request: Request, completion: Completion) -> None:
        """Count a fresh answer and cache it."""
        with self._lock:
            self._usage["requests"] += 1
            self._usage["prompt_tokens"] += completion.prompt_tokens
            self._usage["completion_tokens"] += completion.completion_tokens
        path = self._cache_path(request)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(completion), indent=None)

    def complete_many(self, requests: Sequence[Request], *, progress: bool = False,
                      desc: str | None = None) -> list[Completion]:
        """Answers to ``requests`` in order, ``concurrency`` at a time. Every answer that came back is
        cached before an error propagates, so a re-run resumes where this one stopped."""
        requests = list(requests)
        if not requests:
            return []
        def one(request: Request) -> Completion:
            return self.complete(request.messages, max_tokens=request.max_tokens, temperature=request.temperature,
                                 logprobs=request.logprobs, attempt=request.attempt)

        with progress_bar(total=len(requests), desc=desc or self.name, unit="req", disable=not progress) as bar:
            if self.concurrency <= 1 or len(requests) == 1:
                answers = []
                for request in requests:
                    answers.append(one(request))
                    bar.update(1)
                return answers
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
                futures = [pool.submit(one, request) for request in requests]
                for future in as_completed(futures):  # the bar is drawn from this thread only
                    future.result()
                    bar.update(1)
                return [future.result() for future in futures]

    def _cache_identity(self) -> dict:
        return {"kind": self.kind, "model": self.model}

    def _cache_path(self, request: Request) -> Path:
        key = json.dumps({**self._cache_identity(), **asdict(request)}, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def _generate(self, request: Request) -> Completion:
        raise NotImplementedError


class OpenAIBackend(_CachedBackend):
    """A server speaking OpenAI's chat completions API (``POST {base_url}/chat/completions``)."""

    kind = "openai"

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        model: str = "gpt-4o-mini",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        retries: int = 5,
        timeout: float = 60.0,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        cache_dir: str | Path | None = None,
        prompt_price: float | None = None,
        completion_price: float | None = None,
    ) -> None:
        """``base_url`` up to the API version (``http://localhost:11434/v1`` for ollama);
        ``api_key_env`` names the environment variable read at each call (unset: no
        ``Authorization`` header, as local servers expect); ``retries`` retries after the first
        try, waiting ``backoff * 2**i`` seconds plus jitter (at most ``max_wait``) or what
        ``Retry-After`` says; ``timeout`` seconds per try; prices are per million tokens."""
        super().__init__(model, cache_dir, prompt_price, completion_price)
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_wait = max_wait
        self._logprobs_refused = False
        self._max_completion_tokens = False

    def __repr__(self) -> str:
        return (f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    def _cache_identity(self) -> dict:
        return {"kind": self.kind, "base_url": self.base_url, "model": self.model}

    def _generate(self, request: Request) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": request.messages,
                                "max_tokens": request.max_tokens, "temperature": request.temperature}
        if request.logprobs and not self._logprobs_refused:
            body |= {"logprobs": True, "top_logprobs": request.logprobs}
        if self._max_completion_tokens:
            body["max_completion_tokens"] = body.pop("max_tokens")
        while True:  # each adjustment below is made at most once
            try:
                return _parse_chat_answer(self._post(body), self._scrub)
            except _Refused as refused:
                said = refused.message.lower()
                if "logprobs" in body and "logprob" in said:
                    self._logprobs_refused = True  # a server without log-probabilities: ask without
                    body.pop("logprobs"), body.pop("top_logprobs")
                elif "max_tokens" in body and "max_completion_tokens" in said:
                    self._max_completion_tokens = True  # OpenAI's reasoning models renamed it
                    body["max_completion_tokens"] = body.pop("max_tokens")
                else:
                    raise BackendError(refused.message) from None

    def _post(self, body: dict) -> dict:
        """POST ``body``, retrying what is worth retrying; the answer's JSON."""
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            headers = {"Content-Type": "application/json"}
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            wait = None
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                            timeout=self.timeout) as response:
                    raw = response.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    last = f"an answer that is not JSON: {self._scrub(raw[:200].decode(errors='replace'))!r}"
            except urllib.error.HTTPError as error:
                detail = self._scrub(_error_text(error))
                last = f"HTTP {error.code} from {url}: {detail}"
                if error.code != 429 and error.code < 500:
                    hint = (f" (is ${self.api_key_env} set to a valid key?)" if error.code in (401, 403) else "")
                    raise _Refused(f"{last}{hint}") from None
                wait = _retry_after(error.headers.get("Retry-After"))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                last = f"{type(reason).__name__} talking to {url}: {self._scrub(str(reason))}"
            if attempt == self.retries:
                break
            if wait is None:
                wait = self.backoff * 2**attempt * (1 + random.random())  # exponential, with jitter
            time.sleep(min(wait, self.max_wait))
        raise BackendError(f"{self.name}: gave up after {self.retries + 1} tries; last: {last}")

    def _scrub(self, text: str) -> str:
        """``text`` with the API key (should a server echo it) blanked out."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text


class _Refused(Exception):
    """A 4xx answer (other than 429): not worth retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read().decode(errors="replace")
    except Exception:  # the body may be gone with the connection
        return error.reason or ""
    try:
        parsed = json.loads(raw)
        message = parsed.get("error", parsed)
        return str(message.get("message", message) if isinstance(message, dict) else message)[:500]
    except (json.JSONDecodeError, AttributeError):
        return raw[:500]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if absent or odd."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _parse_chat_answer(answer: dict, scrub) -> Completion:
    """A :class:`Completion` from a chat completions answer; log-probabilities where present."""
    try:
        choice = answer["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BackendError(f"not a chat completion: {scrub(json.dumps(answer)[:300])}") from None
    top_logprobs = tokens = None
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if content:
        try:
            tokens = [entry["token"] for entry in content]
            top_logprobs = [{alt["token"]: float(alt["logprob"]) for alt in entry.get("top_logprobs") or []}
                            or {entry["token"]: float(entry["logprob"])} for entry in content]
        except (KeyError, TypeError, ValueError):
            tokens = top_logprobs = None  # an unfamiliar shape: as if there were none
    usage = answer.get("usage") or {}
    return Completion(text=text, top_logprobs=top_logprobs, tokens=tokens,
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))


class LocalBackend(_CachedBackend):
    """A Hugging Face chat model run locally by transformers, loaded on the first request.

    :meth:`complete_many` generates greedy requests ``batch_size`` at a time (left-padded);
    sampled ones (a retry's) one at a time, seeded by the request, so they are reproducible."""

    kind = "local"
    continues_final_message = True

    def __init__(self, model: str = "smollm2-135m", *, device: str = "cpu", batch_size: int = 8,
                 cache_dir: str | Path | None = None) -> None:
        """``model``: ``"smollm2-135m"`` (the embedded SmolLM2-135M-Instruct), a Hugging Face id or a folder."""
        super().__init__(model, cache_dir, None, None)
        self.device = device
        self.batch_size = batch_size
        self._loaded: tuple[Any, Any] | None = None
        self._generate_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model!r}, device={self.device!r})"

    def complete_many(self, requests: Sequence[Request], *, progress: bool = False,
                      desc: str | None = None) -> list[Completion]:
        requests = list(requests)
        answers: list[Completion | None] = [self._lookup(request) for request in requests]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        groups: dict[tuple, list[int]] = {}
        for i in missing:  # one batch shares its generation settings; sampling goes one by one
            r = requests[i]
            groups.setdefault((r.max_tokens, r.logprobs, r.temperature, i if r.temperature > 0 else -1), []).append(i)
        with progress_bar(total=len(requests), initial=len(requests) - len(missing), desc=desc or self.name,
                          unit="req", disable=not progress) as bar:
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start:start + self.batch_size]
                    for i, completion in zip(chunk, self._generate_batch([requests[i] for i in chunk])):
                        self._store(requests[i], completion)
                        answers[i] = completion
                    bar.update(len(chunk))
        return answers  # type: ignore[return-value]

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch

            from workbench.models import EMBEDDED, _embedded_folder, _from_pretrained

            source = _embedded_folder(self.model) if self.model in EMBEDDED else self.model
            hf, tokenizer = _from_pretrained(source, torch.float32)
            tokenizer.padding_side = "left"  # generation continues every row from its end
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._loaded = (hf.to(self.device).eval(), tokenizer)
        return self._loaded

    def _generate(self, request: Request) -> Completion:
        return self._generate_batch([request])[0]

    def _generate_batch(self, requests: list[Request]) -> list[Completion]:
        """Answers to requests that share ``max_tokens``, ``logprobs`` and ``temperature``."""
        import torch

        first = requests[0]
        with self._generate_lock:  # one generation at a time: the model is shared
            hf, tokenizer = self._load()
            texts = [self._chat_text(tokenizer, r.messages) for r in requests]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            sample = first.temperature > 0
            seed = int(hashlib.sha256(json.dumps(asdict(first), sort_keys=True).encode()).hexdigest()[:8], 16)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # a sampled answer (a retry's) is reproducible; the caller's RNG untouched
                out = hf.generate(
                    **batch, max_new_tokens=first.max_tokens, do_sample=sample,
                    temperature=first.temperature if sample else None, top_p=None, top_k=None,
                    output_logits=bool(first.logprobs), return_dict_in_generate=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
            eos = {tokenizer.eos_token_id, *(_as_list(getattr(hf.generation_config, "eos_token_id", None)))}
            width = batch["input_ids"].shape[1]
            completions = []
            for row in range(len(requests)):
                new = out.sequences[row, width:].tolist()
                n_kept = next((i for i, t in enumerate(new) if t in eos), len(new))
                kept = new[:n_kept]
                top_logprobs = tokens = None
                if first.logprobs:
                    tokens = [tokenizer.decode([t]) for t in kept]
                    top_logprobs = [self._alternatives(tokenizer, step[row], first.logprobs)
                                    for step in out.logits[:n_kept]]
                completions.append(Completion(
                    text=tokenizer.decode(kept, skip_special_tokens=True), top_logprobs=top_logprobs, tokens=tokens,
                    prompt_tokens=int(batch["attention_mask"][row].sum()),
                    completion_tokens=min(n_kept + 1, len(new))))  # the end-of-turn token counts
        return completions

    @staticmethod
    def _chat_text(tokenizer: Any, messages: list[dict]) -> str:
        """The prompt text: the chat template with the assistant's turn opened, or, when the last
        message is the assistant's (a prefilled answer), that turn left open to be continued."""
        if messages and messages[-1].get("role") == "assistant":
            return tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @staticmethod
    def _alternatives(tokenizer: Any, logits: Any, n: int) -> dict[str, float]:
        """The top ``n`` next tokens as text -> log-probability (ids decoding alike add up)."""
        import torch

        values, indices = torch.log_softmax(logits.float(), dim=-1).topk(n)
        alternatives: dict[str, float] = {}
        for value, index in zip(values.tolist(), indices.tolist()):
            token = tokenizer.decode([index])
            alternatives[token] = float(torch.logaddexp(torch.tensor(alternatives.get(token, -math.inf)),
                                                        torch.tensor(value)))
        return alternatives


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def make_backend(kind: str, model: str | None = None, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", cache_dir: str | Path | None = None, **options: Any):
    """A backend by name, for notebooks and the CLI: ``kind`` is ``"openai"`` (``model`` default
    ``gpt-4o-mini``, ``base_url`` default OpenAI's) or ``"local"`` (``model`` default the embedded
    ``smollm2-135m``). ``options`` go to the backend's constructor."""
    if kind == "openai":
        return OpenAIBackend(base_url or "https://api.openai.com/v1", model or "gpt-4o-mini",
                             api_key_env=api_key_env, cache_dir=cache_dir, **options)
    if kind == "local":
        if base_url is not None:
            raise ValueError("make_backend: a local backend takes no base_url (did you mean kind='openai'?)")
        return LocalBackend(model or "smollm2-135m", cache_dir=cache_dir, **options)
    raise ValueError(f"make_backend: unknown kind {kind!r}; choose 'openai' (any OpenAI-compatible server: "
                     f"OpenAI, vLLM, ollama, llama.cpp) or 'local' (a Hugging Face model run by transformers)")
