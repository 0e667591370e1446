"""benchmarks/serving.py's capacity probe against a fake server: it stops at a plateau while requests wait or
once all are admitted, reports the gauges at the peak, and aborts every request (closes every stream)."""

import importlib.util
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

SERVING = Path(__file__).parents[1] / "benchmarks" / "serving.py"


@pytest.fixture(scope="module")
def serving():
    spec = importlib.util.spec_from_file_location("serving_benchmark", SERVING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeServer:
    """Admits the first `capacity` open streams in arrival order; the others wait (no chunk) until one closes."""

    def __init__(self, capacity: int):
        self.capacity, self.lock, self.streams = capacity, threading.Lock(), []

    def create(self, **request):
        assert request["stream"] and request["max_tokens"] == 1000
        stream = FakeStream(self)
        with self.lock:
            self.streams.append(stream)
        return stream

    def live(self) -> list:
        with self.lock:
            return [s for s in self.streams if not s.closed]

    def gauges(self, url, metrics) -> dict:
        assert set(metrics) == {"running", "waiting", "kv_cache_usage"}
        live = self.live()
        running = min(len(live), self.capacity)
        return {"running": float(running), "waiting": float(len(live) - running),
                "kv_cache_usage": running / self.capacity}


class FakeStream:
    def __init__(self, server: FakeServer):
        self.server, self.closed = server, False

    def __iter__(self):
        while not self.closed:
            if self in self.server.live()[: self.server.capacity]:
                yield "chunk"  # decoding: a token at a time, for as long as the client reads
            time.sleep(0.005)

    def close(self):
        self.closed = True


@pytest.mark.parametrize("capacity,requests,stopped", [(3, 8, "no growth"), (10, 4, "all admitted")])
def test_probe_stops_reports_and_aborts(serving, monkeypatch, capacity, requests, stopped):
    server = FakeServer(capacity)
    monkeypatch.setattr(serving, "read_metrics", server.gauges)
    client = SimpleNamespace(completions=SimpleNamespace(create=server.create))
    began = time.perf_counter()
    result = serving.peak_running(client, "http://fake", "tiny", ["p"] * requests, 1000, settle_s=0.5, limit_s=20)
    assert time.perf_counter() - began < 10  # stopped by the plateau or the admissions, not the time limit
    assert result["stopped"].startswith(stopped) and result["failed"] == 0
    assert result["peak_running"] == min(capacity, requests)
    assert result["waiting_at_peak"] == max(0, requests - capacity)
    assert result["kv_cache_usage_at_peak"] == min(capacity, requests) / capacity
    assert len(server.streams) == requests and not server.live()  # every request aborted, waiting ones too
