"""Network backends against real HTTP servers on 127.0.0.1 (stdlib http.server in a thread) and
the ddgs path with injected faults. Nothing here leaves the machine."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
import time
from dataclasses import dataclass, field

import pytest

from agent.errors import ConfigError
from tools.search import (
    BadResponse,
    EngineTimeout,
    HttpBackend,
    Passage,
    RateLimited,
    RetryPolicy,
    SearchConfig,
    SearchTool,
    SearchUnavailable,
    TokenBucket,
    WebBackend,
)
from tools.search.retry import MAX_BODY_BYTES
from tools.search.web import DdgsEngine

FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@dataclass
class Reply:
    status: int = 200
    body: object = None  # JSON-encoded unless bytes
    delay_s: float = 0.0


@dataclass
class Stub:
    """A real HTTP server answering from a script of replies (the last one repeats)."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    url: str = ""

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _handler(stub: Stub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            stub.requests.append({"method": self.command, "path": self.path,
                                  "json": json.loads(body) if body else None})
            reply = stub.next_reply()
            time.sleep(reply.delay_s)  # in the server's thread, never the test's event loop
            data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def stub():
    s = Stub(replies=[Reply()])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    s.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield s
    server.shutdown()
    server.server_close()
    thread.join()


def retriever_body(*titles: str) -> dict:
    return {"result": [[{"document": {"id": str(i), "contents": f'"{t}"\n{t} is a thing.'}, "score": 1.0 - i / 10}
                        for i, t in enumerate(titles)]]}


def searx_body(*titles: str) -> dict:
    return {"results": [{"title": t, "url": f"https://example.org/{t}", "content": f"About {t}."} for t in titles]}


# -- http backend (Search-R1 /retrieve) --------------------------------------------------------------


async def test_http_backend_speaks_search_r1(stub):
    stub.replies = [Reply(body=retriever_body("Paris", "Lyon"))]
    backend = HttpBackend(stub.url + "/retrieve", retry=FAST)
    try:
        res = await backend.search("capital of France", 2)
        res2 = await backend.search("second call reuses the client", 2)
    finally:
        await backend.aclose()
    assert res == [Passage("Paris", "Paris is a thing.", "0"), Passage("Lyon", "Lyon is a thing.", "1")]
    assert res2 == res
    assert stub.requests[0] == {"method": "POST", "path": "/retrieve",
                                "json": {"queries": ["capital of France"], "topk": 2, "return_scores": True}}


async def test_http_backend_retries_429_then_succeeds(stub):
    stub.replies = [Reply(429, {}), Reply(503, {}), Reply(body=retriever_body("Rome"))]
    backend = HttpBackend(stub.url + "/retrieve", retry=FAST)
    try:
        assert [p.title for p in await backend.search("q", 3)] == ["Rome"]
    finally:
        await backend.aclose()
    assert len(stub.requests) == 3


@pytest.mark.parametrize("reply, kind, message", [
    (Reply(429, {}), RateLimited, "rate limiting"),
    (Reply(body=b"<html>oops</html>"), BadResponse, "not JSON"),
    (Reply(body={"result": "nope"}), BadResponse, "not a list"),
    (Reply(body={"result": [[{"document": {"no": "contents"}}]]}), BadResponse, "without document"),
    (Reply(404, {}), BadResponse, "HTTP 404"),
    (Reply(body=retriever_body("late"), delay_s=1.0), EngineTimeout, "within 0.2s"),
])
async def test_http_backend_failures(stub, reply, kind, message):
    stub.replies = [reply]
    backend = HttpBackend(stub.url + "/retrieve", timeout_s=0.2, retry=FAST)
    try:
        with pytest.raises(kind, match=message):
            await backend.search("q", 3)
    finally:
        await backend.aclose()
    assert len(stub.requests) == (3 if kind in (RateLimited, EngineTimeout) else 1)


async def test_http_backend_unreachable_and_bad_url():
    backend = HttpBackend("http://127.0.0.1:9/retrieve", retry=FAST)  # discard port: refused
    try:
        with pytest.raises(BadResponse, match="could not be reached"):
            await backend.search("q", 1)
    finally:
        await backend.aclose()
    with pytest.raises(ConfigError, match="http://"):
        HttpBackend("localhost:8000")


# -- web backend: SearXNG JSON engine on a stub -----------------------------------------------------


async def test_web_searxng_results(stub):
    stub.replies = [Reply(body=searx_body("Alpha", "Beta", "Gamma"))]
    backend = WebBackend(url=stub.url + "/search", rate_per_s=0, retry=FAST)
    try:
        res = await backend.search("alpha beta", 2)
    finally:
        await backend.aclose()
    assert res == [Passage("Alpha", "About Alpha.", "https://example.org/Alpha"),
                   Passage("Beta", "About Beta.", "https://example.org/Beta")]
    assert stub.requests[0]["path"] == "/search?q=alpha+beta&format=json"


@pytest.mark.parametrize("reply, message, tries", [
    (Reply(429, {}), "rate limiting", 3),
    (Reply(body=searx_body("late"), delay_s=1.0), "within 0.2s", 3),
    (Reply(body=b"\x00garbage{"), "unreadable", 1),
    (Reply(body={"results": [1, 2]}), "unreadable", 1),
])
async def test_web_searxng_failures_become_unavailable(stub, reply, message, tries):
    stub.replies = [reply]
    backend = WebBackend(url=stub.url + "/search", timeout_s=0.2, rate_per_s=0, retry=FAST)
    try:
        with pytest.raises(SearchUnavailable, match=f"web search is unavailable.*{message}"):
            await backend.search("q", 3)
    finally:
        await backend.aclose()
    assert len(stub.requests) == tries


async def test_tool_over_failing_web_returns_error_text(stub):
    stub.replies = [Reply(429, {})]
    backend = WebBackend(url=stub.url + "/search", rate_per_s=0, retry=FAST)
    async with SearchTool.from_backend(backend) as tool:
        out = await tool.call("anything")
    assert out.error and out.text.startswith("Search failed: web search is unavailable")
    assert out.meta == {"backend": "web", "cache_hit": False, "n_results": 0}


# -- limits: endless bodies, deep JSON ---------------------------------------------------------------

SAFETY_BYTES = 256 * 1024 * 1024  # "endless": the server stops only here, 256x the cap under test


def _endless_handler(announce: int | None) -> type[http.server.BaseHTTPRequestHandler]:
    """Streams ``x`` bytes in 64 KiB chunks until the client hangs up (or SAFETY_BYTES are sent);
    with ``announce`` it declares that Content-Length instead of chunked encoding."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if announce is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(announce))
            self.end_headers()
            chunk = b"x" * 65536
            frame = b"%x\r\n%s\r\n" % (len(chunk), chunk) if announce is None else chunk
            try:
                for _ in range(SAFETY_BYTES // len(chunk)):
                    self.wfile.write(frame)
                if announce is None:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what a capped reader does

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def endless():
    servers = []

    def start(announce: int | None = None) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _endless_handler(announce))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/retrieve"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Highest resident memory of this process above the level at entry, sampled every 5 ms."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


CAP = 1024 * 1024


async def test_http_endless_body_fails_fast_with_bounded_memory(endless):
    url = endless()
    backend = HttpBackend(url, timeout_s=20, retry=FAST, max_body_bytes=CAP)
    async with SearchTool.from_backend(backend, SearchConfig(backend="http", url=url)) as tool:
        with PeakRss() as rss:
            t0 = time.perf_counter()
            out = await tool.call("anything")
            elapsed = time.perf_counter() - t0
    assert out.error and "sent more than 1,048,576 bytes" in out.text, out.text
    assert elapsed < 3.0, f"took {elapsed:.1f}s: the body was read far past the cap"
    assert rss.growth < 32 * 1024 * 1024, f"RSS grew {rss.growth / 2**20:.0f} MiB while reading"


async def test_http_announced_huge_body_is_refused_unread(endless):
    url = endless(announce=100 * 1024 * 1024)
    backend = HttpBackend(url, timeout_s=20, retry=FAST)  # the default cap
    assert backend.max_body_bytes == MAX_BODY_BYTES < 100 * 1024 * 1024
    async with SearchTool.from_backend(backend, SearchConfig(backend="http", url=url)) as tool:
        out = await tool.call("anything")
    assert out.error and "announced 104,857,600 bytes" in out.text, out.text


async def test_http_deeply_nested_json_is_an_error_result(stub):
    stub.replies = [Reply(body=b"[" * 200_000 + b"]" * 200_000)]
    backend = HttpBackend(stub.url + "/retrieve", retry=FAST)
    async with SearchTool.from_backend(backend, SearchConfig(backend="http", url=stub.url)) as tool:
        out = await tool.call("anything")
    assert out.error and "nested too deeply" in out.text, out.text


# -- web backend: failover, retries and ddgs errors with injected engines ---------------------------


class Script:
    """An injected engine function: per engine, a list of outcomes (exception or results)."""

    def __init__(self, **plans: list):
        self.plans = plans
        self.calls: list[str] = []

    async def __call__(self, engine: str, query: str, k: int) -> list[Passage]:
        self.calls.append(engine)
        plan = self.plans[engine]
        outcome = plan.pop(0) if len(plan) > 1 else plan[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            await asyncio.sleep(10)
        return outcome


async def test_failover_to_next_engine_after_retries():
    ok = [Passage("Found", "text", "https://b")]
    script = Script(a=[RateLimited("a is rate limiting requests")], b=[EngineTimeout("b timed out"), ok])
    backend = WebBackend(["a", "b"], rate_per_s=0, retry=FAST, call_engine=script)
    assert await backend.search("q", 3) == ok
    assert script.calls == ["a", "a", "a", "b", "b"]


async def test_garbage_fails_over_without_retry_and_empty_tries_next():
    ok = [Passage("X", "y", "z")]
    script = Script(a=[BadResponse("a returned an unreadable answer")], b=[[]], c=[ok])
    backend = WebBackend(["a", "b", "c"], rate_per_s=0, retry=FAST, call_engine=script)
    assert await backend.search("q", 3) == ok
    assert script.calls == ["a", "b", "c"]


async def test_all_engines_failing_names_each_failure():
    script = Script(a=[RateLimited("a is rate limiting requests")], b=["hang"])
    backend = WebBackend(["a", "b"], timeout_s=0.05, rate_per_s=0, retry=FAST, call_engine=script)
    with pytest.raises(SearchUnavailable) as info:
        await backend.search("q", 3)
    assert str(info.value) == ("web search is unavailable (a is rate limiting requests; "
                               "b did not answer within 0.05s)")


async def test_no_results_anywhere_is_empty_not_error():
    backend = WebBackend(["a", "b"], rate_per_s=0, retry=FAST, call_engine=Script(a=[[]], b=[[]]))
    assert await backend.search("q", 3) == []


async def test_ddgs_exceptions_are_classified():
    ddgs_exc = pytest.importorskip("ddgs.exceptions")
    outcomes = {"duckduckgo": ddgs_exc.RatelimitException("202 Ratelimit"),
                "brave": ddgs_exc.TimeoutException("timed out"),
                "mojeek": ddgs_exc.DDGSException("DNSError: no records found"),
                "wikipedia": ddgs_exc.DDGSException("No results found.")}
    calls = []

    def text_fn(query: str, engine: str, k: int):
        calls.append(engine)
        raise outcomes[engine]

    engine = DdgsEngine(text_fn=text_fn)
    with pytest.raises(RateLimited):
        await engine("duckduckgo", "q", 3)
    with pytest.raises(EngineTimeout):
        await engine("brave", "q", 3)
    with pytest.raises(BadResponse, match="DNSError"):
        await engine("mojeek", "q", 3)
    assert await engine("wikipedia", "q", 3) == []
    backend = WebBackend(list(outcomes)[:3], rate_per_s=0, retry=FAST, call_engine=engine)
    with pytest.raises(SearchUnavailable, match="duckduckgo is rate limiting.*brave timed out.*DNSError"):
        await backend.search("q", 3)


async def test_ddgs_results_and_bugs():
    def text_fn(query: str, engine: str, k: int):
        return [{"title": "T", "href": "https://t", "body": "B"}, {"title": "", "body": ""}][:k]

    assert await DdgsEngine(text_fn=text_fn)("duckduckgo", "q", 5) == [Passage("T", "B", "https://t")]
    with pytest.raises(BadResponse, match="unreadable"):
        await DdgsEngine(text_fn=lambda q, e, k: "garbage")("bing", "q", 3)

    def buggy(query: str, engine: str, k: int):
        raise TypeError("a bug in splice, not the network")

    with pytest.raises(TypeError):  # bugs raise; only network failures become results
        await DdgsEngine(text_fn=buggy)("bing", "q", 3)


def test_searxng_engine_needs_url():
    with pytest.raises(ConfigError, match="needs url"):
        WebBackend(["searxng"])


# -- politeness ---------------------------------------------------------------------------------------


async def test_token_bucket_spaces_requests():
    bucket = TokenBucket(rate_per_s=50, burst=2)
    start = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for _ in range(7):
            tg.create_task(bucket.acquire())
    elapsed = time.monotonic() - start
    assert 0.08 <= elapsed < 1.0  # 2 at once, then 5 more at 50/s = 0.1 s


async def test_rate_limit_applies_per_engine():
    script = Script(a=[[Passage("A", "a", "")]])
    backend = WebBackend(["a"], rate_per_s=20, burst=1, retry=FAST, call_engine=script)
    start = time.monotonic()
    for _ in range(4):
        await backend.search("q", 1)
    assert time.monotonic() - start >= 0.14  # 3 waits of 1/20 s


def test_retry_policy_backoff_grows():
    p = RetryPolicy(attempts=4, base_delay_s=1.0, max_delay_s=3.0)
    assert [0.5 <= p.delay(0) <= 1.0, 1.0 <= p.delay(1) <= 2.0, 1.5 <= p.delay(3) <= 3.0] == [True] * 3
