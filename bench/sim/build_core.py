"""cffi (API mode) build of the simulator's C core: bench/sim/core.c -> bench.sim._core.

Runs at `pip install .` (setup.py cffi_modules).  For development, build in place:
    python -c "from bench.sim.build_core import ffibuilder; ffibuilder.compile(tmpdir='.')"
from the repository root; bench.sim.fast.make_sim_target() does that on demand
(ensure_built) when a checkout lacks the extension.  Only non-variadic functions are
declared.  -ffp-contract=off: step costs are float sums that must round exactly as
Python's do (no fused multiply-add).
"""
import os

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def _cdef_text() -> str:
    header = _read("core.h")
    start = header.index("/* cdef-begin */") + len("/* cdef-begin */")
    end = header.index("/* cdef-end */")
    return header[start:end]


ffibuilder = cffi.FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "bench.sim._core",
    _read("core.c"),
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-ffp-contract=off"],
    libraries=["m"],
)


def ensure_built() -> bool:
    """Import bench.sim._core, compiling it in place first if this checkout lacks it
    (development trees and test runs from a fresh clone).  Returns True when importable."""
    try:
        import bench.sim._core  # noqa: F401
        return True
    except ImportError:
        pass
    import warnings
    root = os.path.dirname(os.path.dirname(HERE))
    cwd = os.getcwd()
    try:
        os.chdir(root)
        with warnings.catch_warnings():      # setuptools' notes are not the user's concern
            warnings.simplefilter("ignore")
            ffibuilder.compile(tmpdir=".")
    finally:
        os.chdir(cwd)
        for leftover in ("_core.o", "_core.c"):
            try:
                os.remove(os.path.join(HERE, leftover))
            except OSError:
                pass
    import importlib
    importlib.invalidate_caches()
    import bench.sim._core  # noqa: F401
    return True


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
