"""The multi-process HTTP benchmark drives the shipped N-process layout and counts its children's CPU."""

from __future__ import annotations

from benchmarks import http_processes
from tests.tls.terminator import system_binary


def test_every_layout_answers_every_request_and_children_cpu_is_counted(monkeypatch):
    system_binary(("wrk",), "wrk")
    monkeypatch.setattr(http_processes, "ROWS_PER_REQUEST", (1,))
    result = http_processes.run(quick=True, connections=4, processes=2)
    cell = result["cells"]["1"]
    for server in ("stdlib pinned", "stdlib", "uvicorn", "uvicorn x2"):
        assert cell[server]["requests_per_s"] > 0 and cell[server]["errors"] == 0, (server, cell[server])
        # CPU of the processes that served (the children for x2): not 0, so they were counted
        assert 0 < cell[server]["cpu_us"] < 1e5, (server, cell[server])
    assert set(cell["ratios"]) == {"uvicorn", "uvicorn x2"}
    assert set(cell["ratios"]["uvicorn x2"]) == {"stdlib pinned", "stdlib"}
    assert http_processes.table(result)[2].startswith("| 1 | stdlib pinned |")
