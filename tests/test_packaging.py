"""The installed package is complete and self-contained: package data found through the
package, no C part compiled into the checkout, result files that follow the umask."""
import os
import stat
from pathlib import Path

import bench
from bench.qualify import default_spec_path, load_spec
from bench.results import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def test_tests_use_the_installed_package():
    assert Path(bench.__file__).resolve().parent != ROOT / "bench"


def test_default_qualification_spec_ships_with_the_package():
    p = default_spec_path()
    assert p.is_file(), p
    assert Path(bench.__file__).resolve().parent in p.resolve().parents
    assert load_spec(p)["checks"]


def test_no_compiled_code_in_the_checkout():
    built = [p for p in (ROOT / "bench").rglob("*") if p.suffix in (".so", ".o")
             or p.name in ("_core.c", "_helper.c")]
    assert built == []


def test_result_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o027)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640
