"""cffi (API mode) build of the host helper: bench/host/helper.c -> bench.host._helper.

Runs at `pip install .` (setup.py cffi_modules).  For development, build in place:
    python -c "from bench.host.build_helper import ffibuilder; ffibuilder.compile(tmpdir='.')"
from the repository root.  Only non-variadic functions are declared: ioctl is wrapped
(gm_ioctl_ptr / gm_ioctl_val) so no call goes through libffi's slow variadic path.
"""
import os

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def _cdef_text() -> str:
    header = _read("helper.h")
    start = header.index("/* cdef-begin */") + len("/* cdef-begin */")
    end = header.index("/* cdef-end */")
    return header[start:end]


ffibuilder = cffi.FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "bench.host._helper",
    _read("helper.c"),
    include_dirs=[HERE],
    define_macros=[("_GNU_SOURCE", None)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
)


def ensure_built() -> bool:
    """Import bench.host._helper, compiling it in place first if this checkout lacks it
    (development trees and test runs from a fresh clone).  Returns True when importable."""
    try:
        import bench.host._helper  # noqa: F401
        return True
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(HERE))
    cwd = os.getcwd()
    try:
        os.chdir(root)
        ffibuilder.compile(tmpdir=".")
    finally:
        os.chdir(cwd)
        for leftover in ("_helper.o", "_helper.c"):
            try:
                os.remove(os.path.join(HERE, leftover))
            except OSError:
                pass
    import importlib
    importlib.invalidate_caches()
    import bench.host._helper  # noqa: F401
    return True


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
