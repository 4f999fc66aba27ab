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

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
