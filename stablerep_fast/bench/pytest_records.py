"""A pytest plugin: one record per test, written as the test ends, to validate's stage log.

``pytest -p stablerep_fast.bench.pytest_records --records=PATH`` appends to the JSONL file PATH
(see ``validate.StageLog``) a line naming each test as it starts, then its record: suite
"tests", test (the node id), outcome (passed, failed, error, skipped), seconds and, unless it
passed, detail (the reason, one line). Modules or folders that cannot be collected are records
too (phase "collect"): an error, or a skip with its reason (a stage's extra not installed).
A run stopped part way keeps the records of the tests that ended.
"""

from __future__ import annotations

import pytest

from stablerep_fast.bench.validate import StageLog


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--records", default=None, metavar="PATH", help="append a JSON line per test to PATH (validate)")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--records")
    if path:
        config.pluginmanager.register(_Records(StageLog(path, "tests")), "stablerep_fast_records")


class _Records:
    def __init__(self, log: StageLog):
        self.log = log
        self.reports: dict[str, list[pytest.TestReport]] = {}

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed or report.skipped:
            outcome = "error" if report.failed else "skipped"
            self.log.record({"suite": "tests", "test": report.nodeid or ".", "phase": "collect", "outcome": outcome,
                             "detail": _reason(report)})  # fmt: skip

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.log.running(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        reports = self.reports.pop(nodeid, [])
        failed = [r for r in reports if r.failed]
        skipped = [r for r in reports if r.skipped]
        if failed:  # in the test itself, or an error in its setup or teardown
            outcome, detail = ("failed" if failed[0].when == "call" else "error"), _reason(failed[0])
        elif skipped:
            outcome, detail = "skipped", _reason(skipped[0])
        else:
            outcome, detail = "passed", None
        record = {"suite": "tests", "test": nodeid, "outcome": outcome,
                  "seconds": round(sum(r.duration for r in reports), 3)}  # fmt: skip
        if detail is not None:
            record["detail"] = detail
        self.log.record(record)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """One line: a skip's reason, or the failure's error line (the last ``E`` line pytest shows)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return _first(longrepr[2].removeprefix("Skipped: "))
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return _first(crash.message)
    text = str(longrepr)
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return _first(errors[-1] if errors else text)


def _first(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]
