"""The OpenAI-compatible backend against a stub server on 127.0.0.1: answers with and without
log-probabilities, retries (500, 429 with Retry-After, a dropped connection, a slow answer),
fast failure on other 4xx, the persistent cache (a re-run makes no requests), concurrency, the
usage tally, and an API key that never leaves the request header."""

from __future__ import annotations

import math
import time

import pytest

from openai_stub import StubServer
from workbench.autointerp.backends import BackendError, OpenAIBackend, Request, make_backend

SECRET = "sk-test-DO-NOT-LEAK-4242"
HELLO = [{"role": "user", "content": "Count: 1 2 3"}]


def echo(body: dict) -> str:
    return "Answer: " + body["messages"][-1]["content"].split(":")[1].strip()


def backend(server: StubServer, tmp_path, **options) -> OpenAIBackend:
    options = {"backoff": 0.01, "timeout": 5.0, "cache_dir": tmp_path / "cache", **options}
    return OpenAIBackend(server.url, "stub-model", api_key_env="WB_TEST_KEY", **options)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("WB_TEST_KEY", SECRET)


def test_answer_with_and_without_logprobs(tmp_path):
    with StubServer(echo) as server:
        client = backend(server, tmp_path)
        reply = client.complete(HELLO, max_tokens=10, logprobs=2)
        assert reply.text == "Answer: 1 2 3" and not reply.cached
        assert "".join(reply.tokens) == reply.text
        assert reply.top_logprobs[1] == pytest.approx({"1": math.log(0.8), "0": math.log(0.2)})
        assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 2
        assert reply.prompt_tokens > 0 and reply.completion_tokens == len(reply.tokens)
        plain = client.complete(HELLO, max_tokens=10)
        assert plain.top_logprobs is None and "logprobs" not in server.bodies[1]
        assert server.authorizations == [f"Bearer {SECRET}"] * 2
    with StubServer(echo, logprobs=False) as server:  # a server that ignores the request
        assert backend(server, tmp_path / "b").complete(HELLO, max_tokens=10, logprobs=2).top_logprobs is None
    with StubServer(echo, logprobs="refuse") as server:  # one that refuses it: asked again without
        client = backend(server, tmp_path / "c")
        assert client.complete(HELLO, max_tokens=10, logprobs=2).top_logprobs is None
        assert server.requests == 2 and "logprobs" not in server.bodies[1]


def test_asks_again_with_max_completion_tokens_where_max_tokens_is_refused(tmp_path):
    refusal = (400, "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead.")
    with StubServer(echo, script=[refusal]) as server:
        client = backend(server, tmp_path)
        assert client.complete(HELLO, max_tokens=10).text == "Answer: 1 2 3"
        client.complete([{"role": "user", "content": "Count: 4"}], max_tokens=10)
        assert "max_tokens" in server.bodies[0]
        assert [b.get("max_completion_tokens") for b in server.bodies[1:]] == [10, 10]


def test_retries_failures_then_answers(tmp_path):
    script = [500, "drop", ("slow", 1.5), 503]
    with StubServer(echo, script=script) as server:
        reply = backend(server, tmp_path, timeout=0.5).complete(HELLO, max_tokens=10)
        assert reply.text == "Answer: 1 2 3" and server.requests == 5


def test_honours_retry_after(tmp_path):
    with StubServer(echo, script=[(429, 1)]) as server:
        start = time.monotonic()
        assert backend(server, tmp_path).complete(HELLO, max_tokens=10).text == "Answer: 1 2 3"
        assert time.monotonic() - start >= 0.95 and server.requests == 2


def test_gives_up_after_the_retries(tmp_path):
    with StubServer(echo, script=[500] * 3) as server:
        with pytest.raises(BackendError, match="gave up after 3 tries.*HTTP 500"):
            backend(server, tmp_path, retries=2).complete(HELLO, max_tokens=10)
        assert server.requests == 3


def test_other_4xx_fail_fast_and_never_show_the_key(tmp_path):
    # the server echoes the key in its error: the message must not
    with StubServer(echo, script=[(401, f"invalid key {SECRET}")]) as server:
        client = backend(server, tmp_path)
        with pytest.raises(BackendError) as raised:
            client.complete(HELLO, max_tokens=10)
        assert server.requests == 1
        message = str(raised.value)
        assert "HTTP 401" in message and "WB_TEST_KEY" in message and SECRET not in message
        assert SECRET not in repr(raised.value) and raised.value.__cause__ is None
        assert SECRET not in repr(client) and SECRET not in str(vars(client))
        client.complete(HELLO, max_tokens=10)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text()


def test_unreachable_server_is_a_clear_error(tmp_path):
    with StubServer(echo) as server:
        url = server.url
    client = OpenAIBackend(url, "stub-model", api_key_env="WB_TEST_KEY", retries=1, backoff=0.01, cache_dir=tmp_path)
    with pytest.raises(BackendError, match="gave up after 2 tries") as raised:
        client.complete(HELLO, max_tokens=10)
    assert SECRET not in str(raised.value)


def test_a_second_run_makes_no_requests(tmp_path):
    requests = [Request([{"role": "user", "content": f"Count: {i}"}], 10) for i in range(12)]
    with StubServer(echo, delay=0.05) as server:
        client = backend(server, tmp_path, concurrency=4, prompt_price=1.0, completion_price=2.0)
        first = client.complete_many(requests)
        assert [r.text for r in first] == [f"Answer: {i}" for i in range(12)]
        assert server.requests == 12 and server.most_active > 1  # concurrent
        usage = client.usage
        assert usage["requests"] == 12 and usage["cached"] == 0
        assert usage["cost"] == pytest.approx((usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1e6)

        again = backend(server, tmp_path)  # a new process, the same cache folder
        second = again.complete_many(requests)
        assert server.requests == 12, "the re-run made requests"
        assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
        assert again.usage == {"requests": 0, "cached": 12, "prompt_tokens": 0, "completion_tokens": 0}
        # the attempt, the temperature and the model are part of the key
        again.complete(requests[0].messages, max_tokens=10, attempt=1)
        again.complete(requests[0].messages, max_tokens=10, temperature=0.5)
        OpenAIBackend(server.url, "other-model", api_key_env="WB_TEST_KEY",
                      cache_dir=tmp_path / "cache").complete(requests[0].messages, max_tokens=10)
        assert server.requests == 15


def test_answers_that_came_back_are_kept_when_one_request_fails(tmp_path):
    requests = [Request([{"role": "user", "content": f"Count: {i}"}], 10) for i in range(4)]
    with StubServer(echo, script=[(400, "bad request")]) as server:
        with pytest.raises(BackendError, match="HTTP 400.*bad request"):
            backend(server, tmp_path, concurrency=2).complete_many(requests)
        assert server.requests == 4
        resumed = backend(server, tmp_path, concurrency=2)
        assert len(resumed.complete_many(requests)) == 4
        assert server.requests == 5 and resumed.usage["cached"] == 3


def test_make_backend():
    assert isinstance(make_backend("openai", "m", base_url="http://127.0.0.1:1/v1"), OpenAIBackend)
    assert make_backend("local").name == "local:smollm2-135m"  # nothing loads until the first request
    with pytest.raises(ValueError, match="unknown kind 'anthropic'.*'openai'.*'local'"):
        make_backend("anthropic", "m")
    with pytest.raises(ValueError, match="no base_url"):
        make_backend("local", base_url="http://127.0.0.1:1/v1")
