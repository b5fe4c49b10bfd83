"""A stand-in for an OpenAI-compatible chat server on 127.0.0.1, for the autointerp tests.

:class:`StubServer` answers ``POST /v1/chat/completions`` with whatever its ``respond(body)``
returns, with or without log-probabilities, after playing a script of failures (500, 429 with
``Retry-After``, a dropped connection, a slow answer, a 4xx). It counts the requests and keeps
their bodies and ``Authorization`` headers.

:func:`rule_model` is a "model" that reads the workbench's own prompts and answers by a rule: the
explanation names a word in quotes; an example has the feature when it holds that word. Given the
right explanation it answers perfectly, so the scorers' metrics can be checked by hand.
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    """An OpenAI-style chat completions server in a thread; use as a context manager."""

    def __init__(self, respond: Callable[[dict], str], *, logprobs: bool = True, script: list | None = None,
                 delay: float = 0.0) -> None:
        """``respond(body)`` gives the answer text; ``logprobs``: whether answers carry them when asked
        (``"refuse"``: a 400 naming logprobs when asked); ``script``: actions for the first requests,
        in order: a status such as ``500``, ``(429, retry_after)``, ``"drop"``, ``("slow", seconds)``, ``(status, body)``;
        ``delay``: seconds before every answer."""
        self.respond = respond
        self.logprobs = logprobs
        self.script = list(script or [])
        self.delay = delay
        self.requests = 0
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests += 1
                    stub.bodies.append(body)
                    stub.authorizations.append(self.headers.get("Authorization"))
                    action = stub.script.pop(0) if stub.script else None
                    stub.active += 1
                    stub.most_active = max(stub.most_active, stub.active)
                try:
                    stub._handle(self, body, action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow answer
                finally:
                    with stub._lock:
                        stub.active -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, body: dict, action) -> None:
        if action == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(action, int):
            return _send(handler, action, {"error": {"message": "internal error"}})
        if isinstance(action, tuple) and action[0] == 429:
            return _send(handler, 429, {"error": {"message": "slow down"}}, {"Retry-After": str(action[1])})
        if isinstance(action, tuple) and action[0] == "slow":
            time.sleep(action[1])
        elif isinstance(action, tuple):
            return _send(handler, action[0], {"error": {"message": action[1]}})
        if body.get("logprobs") and self.logprobs == "refuse":
            return _send(handler, 400, {"error": {"message": "logprobs are not supported by this model"}})
        time.sleep(self.delay)
        text = self.respond(body)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        pieces = re.findall(r"\d+|\D+", text) or [""]
        if body.get("logprobs") and self.logprobs is True:
            choice["logprobs"] = {"content": [_logprobs(piece, body.get("top_logprobs", 1)) for piece in pieces]}
        prompt = sum(len(m["content"]) for m in body["messages"]) // 4
        _send(handler, 200, {"id": "stub", "object": "chat.completion", "model": body["model"], "choices": [choice],
                             "usage": {"prompt_tokens": prompt, "completion_tokens": len(pieces),
                                       "total_tokens": prompt + len(pieces)}})


def _logprobs(piece: str, top: int) -> dict:
    """A digit answer is 80% sure (the rest on "0", or "1" when it said 0); anything else certain."""
    if piece.isdigit():
        other = "1" if piece == "0" else "0"
        alternatives = [(piece, math.log(0.8)), (other, math.log(0.2))]
    else:
        alternatives = [(piece, 0.0)]
    return {"token": piece, "logprob": alternatives[0][1],
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives[:top]]}


def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def rule_model(body: dict, *, guess: random.Random | None = None) -> str:
    """Answer a workbench autointerp prompt by the rule "the feature is the quoted word"; with
    ``guess``, answer classifiers and simulations at random instead."""
    system = body["messages"][0]["content"]
    prompt = body["messages"][-1]["content"]
    if "[EXPLANATION]" in system:
        marked = Counter(m.strip() for m in re.findall(r"<<(.*?)>>", prompt))
        return f'The feature fires here.\n[EXPLANATION]: the word "{marked.most_common(1)[0][0]}"'
    word = re.search(r'"([^"]+)"', prompt.split("\n")[0]).group(1)
    if "<start>" in prompt:
        tokens = prompt.split("<start>\n")[1].split("\n<end>")[0].split("\n")
        values = [guess.randint(0, 10) if guess else 10 * (token == word) for token in tokens]
        return "<start>\n" + "\n".join(f"{t}\t{v}" for t, v in zip(tokens, values)) + "\n<end>"
    texts = re.findall(r"^Example \d+: (.*)$", prompt, re.MULTILINE)
    if guess:
        answers = [guess.randint(0, 1) for _ in texts]
    elif "marked" in system:
        marked = [re.findall(r"\w+", " ".join(re.findall(r"<<(.*?)>>", t))) for t in texts]
        answers = [int(bool(words) and all(w == word for w in words)) for words in marked]
    else:
        answers = [int(word in re.findall(r"\w+", t)) for t in texts]
    return "[" + ", ".join(map(str, answers)) + "]"
