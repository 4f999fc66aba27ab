"""gmembench: in-place vs dual-backing guest_memfd conversion benchmarks."""
__version__ = "0.1.0"
