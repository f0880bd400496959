"""Conformance fixtures and the per-suite summary.

`module` is a fresh, initialised token per runner file and per PKCS#11 module
("ferrohsm", "softhsm2"). Each runner file names its suite in a module-level SUITE.
At the end of the run one line per suite and module is printed:

    <suite> [<module>] passed N failed N skipped N

An xfail (a known FerroHSM bug, recorded with its cause) counts as failed in that line,
so the line never hides a bug; a runner may add extra lines (see `extra_summary`).
"""

from collections import defaultdict

import pytest

from conformance.common import MODULES, make_token

_counts: dict = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0})
_suite_of: dict = {}
_extra: list = []


@pytest.fixture(scope="module", params=MODULES)
def module(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"{request.module.__name__.split('.')[-1]}-{request.param}")
    return make_token(request.param, tmp)


@pytest.fixture(scope="session")
def extra_summary():
    """Lets a runner add its own `suite [module] passed N failed N skipped N` line."""
    return _extra


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        suite = getattr(item.module, "SUITE", None)
        params = getattr(getattr(item, "callspec", None), "params", {})
        if suite and "module" in params:
            _suite_of[item.nodeid] = (suite, params["module"])


def pytest_runtest_logreport(report):
    key = _suite_of.get(report.nodeid)
    if key is None:
        return
    c = _counts[key]
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            c["xfailed" if report.skipped else "failed"] += 1
        elif report.passed:
            c["passed"] += 1
        elif report.skipped:
            c["skipped"] += 1
        else:
            c["failed"] += 1
    elif report.when == "teardown" and report.failed:
        c["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    if not _counts and not _extra:
        return
    terminalreporter.section("conformance")
    for (suite, mod), c in sorted(_counts.items()):
        note = f" (of which xfail {c['xfailed']})" if c["xfailed"] else ""
        terminalreporter.write_line(f"{suite} [{mod}] passed {c['passed']} failed "
                                    f"{c['failed'] + c['xfailed']} skipped {c['skipped']}{note}")
    for line in _extra:
        terminalreporter.write_line(line)
