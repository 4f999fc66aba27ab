# The C helper of the host backend and the simulator's C core are compiled at install
# time (cffi API mode).
from setuptools import setup

setup(cffi_modules=["bench/host/build_helper.py:ffibuilder", "bench/sim/build_core.py:ffibuilder"])
