"""cffi (API mode) build of the simulator's C core: bench/sim/core.c -> bench.sim._core.

Runs at `pip install .` (setup.py cffi_modules), never at run time.  Only non-variadic
functions are declared.  -ffp-contract=off: step costs are float sums that must round exactly as
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
    """Import bench.sim._core (compiled by `pip install .`).  Nothing is ever compiled at run
    time: a checkout is not the installed package, and building into it would let tests
    and runs use code that no install contains.  Raises ImportError saying what to do."""
    try:
        import bench.sim._core  # noqa: F401
    except ImportError as e:
        raise ImportError(f"gmembench's compiled simulator core (bench.sim._core) is missing: install the "
                          f"package with `pip install .` ({e})") from e
    return True


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
