"""Real-hardware backend: runs the compiled steps on the host kernel's KVM / guest_memfd.

kvm.py      ioctl wrappers (named after the ioctls)
helper.c    batch executor and per-step timing in C (cffi API mode, bench.host._helper)
probe.py    what this kernel supports, per strategy step (`gmembench probe`)
backend.py  HostTarget (bench.backend.Target)
sysfs.py    sysfs/proc settings changed for a run, always restored
calibrate.py cost profile measured on this host (`gmembench calibrate`)
"""


def load_helper():
    """The compiled helper module (bench.host._helper, built by `pip install .`).  Raises
    ImportError saying how to install it when missing; nothing is compiled at run time."""
    from bench.host.build_helper import ensure_built
    ensure_built()
    from bench.host import _helper
    return _helper
