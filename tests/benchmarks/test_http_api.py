"""The HTTP benchmark drives every server with wrk and reads its report correctly."""

from __future__ import annotations

import pytest

from benchmarks import http_api
from tests.tls.terminator import system_binary

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:40001/predict
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.25ms  812.44us  15.74ms   93.12%
    Req/Sec     6.20k   301.22     6.51k    80.00%
  Latency Distribution
     50%  902.00us
     75%    1.21ms
     90%    1.80ms
     99%   15.74ms
  18516 requests in 3.00s, 4.87MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   6172.41
Transfer/sec:      1.62MB
"""


def test_wrk_report_is_read_with_units():
    parsed = http_api.parse_wrk(WRK_OUTPUT)
    assert parsed["requests_per_s"] == pytest.approx(6172.41)
    assert parsed["p50"] == pytest.approx(0.902) and parsed["p99"] == pytest.approx(15.74)
    assert parsed["requests"] == 18516 and parsed["non_2xx"] == 3 and parsed["socket_errors"] == 0


def test_a_report_without_a_rate_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="Requests/sec"):
        http_api.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_every_server_answers_every_request_with_predictions(monkeypatch):
    system_binary(("wrk",), "wrk")
    monkeypatch.setattr(http_api, "ROWS_PER_REQUEST", (1,))
    result = http_api.run(quick=True, connections=2)
    cell = result["cells"]["1"]
    for server in ("stdlib", "starlette", "fastpath", "uvicorn", "ceiling"):
        assert cell[server]["requests_per_s"] > 0 and cell[server]["errors"] == 0, (server, cell[server])
        assert isinstance(cell[server]["full_gc"], int)  # counted for every server
        assert 0 < cell[server]["cpu_us"] < 1e5, (server, cell[server])  # this process's CPU per answered request
    assert set(cell["ratios"]) == {"starlette", "fastpath", "uvicorn", "ceiling"}
    assert all(set(r) == {"rps", "p99", "cpu"} for r in cell["ratios"].values())
    assert cell["ratios"]["uvicorn"]["rps"] > 0
    # 2 connections: a scoring call answers 1 or 2 requests (the coalescer's counters, read around the cell)
    assert 1.0 <= cell["uvicorn"]["requests_per_call"] <= 2.0, cell["uvicorn"]
    lines = http_api.table(result)
    assert len(lines) == 2 + 5 + 1 and lines[-1].startswith("1-row: uvicorn answered ")
    (line,) = http_api.bounds(result)
    assert line.startswith("1-row: stdlib ") and "at most" in line and "CPU per request: stdlib " in line
