"""cffi (API mode) build of the host helper: bench/host/helper.c -> bench.host._helper.

Runs at `pip install .` (setup.py cffi_modules), never at run time.  Only non-variadic
functions are declared: ioctl is wrapped (gm_ioctl_ptr / gm_ioctl_val) so no call goes
through libffi's slow variadic path.
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
    """Import bench.host._helper (compiled by `pip install .`).  Nothing is ever compiled at run
    time: a checkout is not the installed package, and building into it would let tests
    and runs use code that no install contains.  Raises ImportError saying what to do."""
    try:
        import bench.host._helper  # noqa: F401
    except ImportError as e:
        raise ImportError(f"gmembench's compiled host helper (bench.host._helper) is missing: install the "
                          f"package with `pip install .` ({e})") from e
    return True


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
