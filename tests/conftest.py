"""The tests exercise the INSTALLED package (`pip install '.[test]'`), never ./bench of the
checkout: a checkout can hold code (or missing package data, or an uncompiled C part) that
no install has.  `python -m pytest` puts the current directory first on sys.path, so the
checkout's root is taken off it here, before any test imports bench, and the import is
checked: bench from the source tree fails the whole session with what to do instead."""
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == ROOT
    except OSError:
        return False


sys.path[:] = [p for p in sys.path if not _is_root(p)]
for _name in [m for m in sys.modules if m == "bench" or m.startswith("bench.")]:
    del sys.modules[_name]       # imported from the checkout before this guard ran

# `from tests.helper import ...` keeps working without the checkout's root on sys.path:
# "tests" names this directory only (a package that cannot see ./bench)
_tests = types.ModuleType("tests")
_tests.__path__ = [str(ROOT / "tests")]
sys.modules.setdefault("tests", _tests)

try:
    import bench
except ImportError:
    bench = None


def _installed_problem() -> str | None:
    if bench is None:
        return ("gmembench is not installed in this Python: run `pip install '.[test]'` "
                "first (the tests run against the installed package)")
    where = Path(bench.__file__).resolve()
    if where.parent == ROOT / "bench":     # (a venv inside the checkout is fine)
        return (f"bench was imported from the source tree ({where}), not from the installed "
                f"package: install with `pip install '.[test]'` (not -e) and run "
                f"`python -m pytest` again")
    return None


def pytest_configure(config):
    problem = _installed_problem()
    if problem:
        raise pytest.UsageError(problem)


def pytest_terminal_summary(terminalreporter):
    """The tally of tests/test_malformed_inputs.py: generated bad inputs and what they got."""
    mod = sys.modules.get("test_malformed_inputs") or sys.modules.get("tests.test_malformed_inputs")
    tally = getattr(mod, "TALLY", None)
    if not tally:
        return
    tr = terminalreporter
    tr.section("generated malformed inputs")
    total = {"tried": 0, "clear error": 0, "traceback": 0, "silently accepted": 0}
    for kind, t in sorted(tally.items()):
        tr.write_line(f"{kind:<32} tried {t['tried']:>4}  clear error {t['clear error']:>4}  "
                      f"traceback {t['traceback']:>3}  silently accepted {t['silently accepted']:>3}")
        for k in total:
            total[k] += t[k]
    tr.write_line(f"{'TOTAL':<32} tried {total['tried']:>4}  clear error {total['clear error']:>4}  "
                  f"traceback {total['traceback']:>3}  silently accepted {total['silently accepted']:>3}")


@pytest.fixture(autouse=True)
def _every_result_follows_the_schema(request):
    """After each test, every results.json gmembench produced under the test's temporary
    directory is validated against the JSON Schema shipped in the package
    (bench/schemas/results.schema.json).  Hand-written synthetic results
    (tests/synthetic_results.py, marked "synthetic") are not gmembench's and are left out."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is None:
        return
    import json
    from bench.results import validate_results
    for f in Path(tmp).rglob("results.json"):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or doc.get("synthetic"):
            continue
        if doc.get("schema") != "gmembench-results/1":
            continue
        validate_results(doc)
