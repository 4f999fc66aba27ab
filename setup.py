# The C helper of the host backend is compiled at install time (cffi API mode).
from setuptools import setup

setup(cffi_modules=["bench/host/build_helper.py:ffibuilder"])
