"""The configured uvicorn (`api/server.py`) on a loopback port with the FakeEngine: slow clients
are cut off by raw sockets that trickle bytes, a stuck job never blocks /health, and a shutdown
drains the engine before waiting for connections."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from mlx_server.api.app import create_app
from mlx_server.api.server import build_server
from tests.api_util import assert_envelope, chat_body, sse_data, sse_json

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 1.0


class Running:
    def __init__(self, server, thread):
        self.server = server
        self.thread = thread
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve(settings, engine) -> Running:
    server = build_server(create_app(settings, engine), settings, port=0, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return Running(server, thread)


@pytest.fixture
def running(settings, engine) -> Iterator[Running]:
    settings = replace(
        settings, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT, shutdown_grace=0.2
    )
    r = serve(settings, engine)
    yield r
    r.stop()


def _connect(running: Running) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    sock.settimeout(5)
    return sock


def _trickle_until_closed(sock: socket.socket, chunks, interval: float = 0.1) -> bytes:
    """Send `chunks` one by one until the server closes; return what it answered."""
    received = b""
    sock.settimeout(interval)
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except OSError:  # reset: the server closed on us
            break
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        received += data
    sock.settimeout(2)
    try:
        while data := sock.recv(65536):
            received += data
    except OSError:
        pass
    return received


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _then_forever(first: bytes, item: bytes):
    yield first
    while True:
        yield item


HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)


def test_trickled_headers_are_cut_off(running, engine):
    sock = _connect(running)
    started = time.monotonic()
    answer = _trickle_until_closed(sock, _then_forever(HEAD, b"X-Slow: 1\r\n"))
    elapsed = time.monotonic() - started
    assert answer == b"" and HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 1.5
    assert engine.requests == []


def test_a_silent_connection_is_cut_off(running):
    sock = _connect(running)
    started = time.monotonic()
    assert sock.recv(1) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_a_trickled_body_gets_a_408_and_is_cut_off(running, engine):
    sock = _connect(running)
    started = time.monotonic()
    head = HEAD + b"Content-Length: 1000\r\n\r\n"
    answer = _trickle_until_closed(sock, _then_forever(head, b" "))
    elapsed = time.monotonic() - started
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + 1.5
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_timeout"
    assert engine.requests == []


def test_a_slow_next_request_on_a_kept_alive_connection_is_cut_off(running, engine):
    sock = _connect(running)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    answer = _trickle_until_closed(sock, _then_forever(b"GET /hea", b"d"))
    assert answer == b"" and time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_clients_that_are_slow_but_in_time_are_served(running, engine):
    body = json.dumps(chat_body()).encode()
    sock = _connect(running)
    parts = [HEAD, b"Content-Length: %d\r\n\r\n" % len(body), body[:10], body[10:]]
    for part in parts:  # 0.9 s in all, each phase well inside its deadline
        sock.sendall(part)
        time.sleep(HEADER_TIMEOUT / 4)
    answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"Hello, world!" in answer
    # The kept-alive connection then sits idle: nothing cuts a finished exchange short.
    time.sleep(HEADER_TIMEOUT * 1.5)  # idle between requests: the keep-alive timeout's job
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_stuck_generation_never_blocks_health_or_metrics(running, engine):
    engine.scripted(queue_delay=3600)  # the job never yields its first event

    answers = []

    def ask() -> None:
        r = httpx.post(running.url + "/v1/chat/completions", json=chat_body(), timeout=30)
        answers.append(r)

    stuck = threading.Thread(target=ask, daemon=True)
    stuck.start()
    deadline = time.monotonic() + 5
    while not engine.jobs:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for path in ("/health", "/metrics", "/v1/models"):
        started = time.monotonic()
        r = httpx.get(running.url + path, timeout=2)
        assert r.status_code == 200 and time.monotonic() - started < 1
    started = time.monotonic()
    running.stop()  # the stuck request is cancelled at the graceful-shutdown timeout
    stuck.join(5)
    assert not running.thread.is_alive() and time.monotonic() - started < 5
    assert_envelope(answers[0], 503, code="shutting_down")


def test_a_stuck_stream_still_ends_with_an_error_event_at_shutdown(settings, engine):
    r = serve(replace(settings, shutdown_grace=0.2), engine)
    # A piece every 1.5 s: the job outlives the whole shutdown wait (0.2 s grace + slack),
    # and the FakeEngine ignores drain(), like an engine stuck in a step.
    engine.scripted(pieces=["first", *["never"] * 10], delay=1.5)
    with httpx.stream("POST", r.url + "/v1/chat/completions", json=chat_body(stream=True)) as s:
        lines = iter(s.iter_lines())
        next(lines)
        r.server.should_exit = True
        text = "\n".join(lines)
    payloads = sse_data(text)
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["error"]["code"] == "shutting_down"
    r.thread.join(10)
    assert not r.thread.is_alive()


def test_more_connections_than_allowed_get_a_503(settings, engine):
    r = serve(replace(settings, max_connections=2, header_timeout=5), engine)
    try:
        idle = [_connect(r) for _ in range(2)]
        time.sleep(0.1)
        answer = httpx.get(r.url + "/health")
        assert answer.status_code == 503
        for sock in idle:
            sock.close()
        time.sleep(0.1)
        assert httpx.get(r.url + "/health").status_code == 200
    finally:
        r.stop()


def test_shutdown_drains_the_engine_and_lets_a_stream_finish(settings, engine):
    r = serve(replace(settings, shutdown_grace=3), engine)
    engine.scripted(pieces=[f"t{i} " for i in range(30)], delay=0.02)
    with httpx.stream("POST", r.url + "/v1/chat/completions", json=chat_body(stream=True)) as s:
        lines = iter(s.iter_lines())
        next(lines)
        r.server.should_exit = True  # what SIGTERM does
        text = "\n".join(lines)
    finish = [c for c in sse_json(text) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert text.rstrip().endswith("data: [DONE]")
    r.thread.join(10)
    assert not r.thread.is_alive()
    assert engine.drain_grace == 3
    with pytest.raises(httpx.ConnectError):
        httpx.get(r.url + "/health")
