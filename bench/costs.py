"""The cost model: what each kernel primitive costs (ns), loaded from a profile file.

The default profile (bench/profiles/default.toml) is seeded from the reference's host
measurements; `gmembench calibrate` writes one measured on the current host, and
`--profile FILE` replaces the default.  Every key of the default must be present, each a
non-negative number, or a table {4k = ns, 2m = ns} giving one operation over 4 KiB and
over 2 MiB, from which a fixed and a per-4K-page part are derived (linear in pages).
"""
import tomllib
from importlib import resources
from pathlib import Path

from bench.errors import InputError

PAGES_2M = 512


def _line_of(text: str, key: str) -> int | None:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(f"{key} ") or line.strip().startswith(f"{key}="):
            return n
    return None


class CostProfile:
    def __init__(self, name: str, source: str, path: str, raw: dict,
                 uncertain: dict | None = None, sources: dict | None = None,
                 overrides: dict | None = None):
        self.name = name
        self.source = source
        self.path = path
        self.raw = raw                                  # values in force (overrides applied)
        self.uncertain: dict[str, tuple] = dict(uncertain or {})
        self.sources: dict[str, str] = dict(sources or {})
        self.overrides: dict = dict(overrides or {})
        # name -> (fixed ns per operation, ns per 4K page)
        self.linear: dict[str, tuple[float, float]] = {}
        for key, v in raw.items():
            if isinstance(v, dict):
                per_page = (v["2m"] - v["4k"]) / (PAGES_2M - 1)
                self.linear[key] = (v["4k"] - per_page, per_page)
            else:
                self.linear[key] = (float(v), 0.0)

    def cost(self, key: str, pages: int = 1) -> float:
        """Cost of one operation of `key` over `pages` 4K pages (numbers ignore pages)."""
        fixed, per_page = self.linear[key]
        return fixed + per_page * pages

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "path": self.path, "costs": self.raw,
                "overrides": self.overrides,
                "uncertain": {k: {"low": lo, "high": hi} for k, (lo, hi) in self.uncertain.items()},
                "sources": self.sources}


def _default_text() -> tuple[str, str]:
    ref = resources.files("bench") / "profiles" / "default.toml"
    return ref.read_text(), str(ref)


def load_profile(path: str | Path | None = None, overrides: dict | None = None) -> CostProfile:
    """Read a profile (default: the built-in one) and replace single values with
    `overrides` ({key: number or {4k, 2m}}; bad ones raise InputError `--cost KEY: ...`)."""
    default_doc = tomllib.loads(_default_text()[0])
    default_text, default_path = _default_text()
    default = default_doc["costs"]
    if path is None:
        text, where = default_text, default_path
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"cannot read cost profile: {e.strerror}", where)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", where, getattr(e, "lineno", None))
    costs = doc.get("costs")
    if not isinstance(costs, dict):
        raise InputError("missing [costs] table", where)
    for key in default:
        if key not in costs:
            raise InputError(f"missing cost {key!r} (every primitive of the model needs a cost)", where)
    for key, v in costs.items():
        line = _line_of(text, key)
        if key not in default:
            raise InputError(f"unknown cost {key!r} (expected one of: {', '.join(default)})", where, line)
        want_pair = isinstance(default[key], dict)
        if want_pair:
            if not (isinstance(v, dict) and set(v) == {"4k", "2m"}):
                raise InputError(f"cost {key!r} must be a table {{4k = ns, 2m = ns}}", where, line)
            vals = list(v.values())
        else:
            if isinstance(v, dict):
                raise InputError(f"cost {key!r} must be a number of ns", where, line)
            vals = [v]
        for x in vals:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise InputError(f"cost {key!r} must be a number of ns, got {x!r}", where, line)
            if x < 0:
                raise InputError(f"cost {key!r} is negative ({x}); costs are >= 0 ns", where, line)
        if want_pair and v["2m"] < v["4k"]:
            raise InputError(f"cost {key!r}: the 2m figure is below the 4k figure", where, line)
    costs = dict(costs)
    for key, v in (overrides or {}).items():
        if key not in default:
            raise InputError(f"--cost {key}: unknown cost (expected one of: {', '.join(default)})")
        _check_override(key, v, default[key])
        costs[key] = v
    unc_raw = doc.get("uncertain", default_doc.get("uncertain", {}) if path is None else {})
    uncertain = {}
    for key, r in unc_raw.items():
        if key not in default or not isinstance(r, dict) or set(r) != {"low", "high"}:
            raise InputError(f"[uncertain] {key}: expected a cost name = {{ low = V, high = V }}",
                             where, _line_of(text, key))
        uncertain[key] = (r["low"], r["high"])
    sources = dict(doc.get("sources", {}))
    meta = doc.get("profile", {})
    return CostProfile(meta.get("name", Path(where).stem), meta.get("source", ""), where, costs,
                       uncertain, sources, overrides)


def _check_override(key: str, v, shape) -> None:
    import math
    vals = list(v.values()) if isinstance(v, dict) else [v]
    if isinstance(shape, dict) != isinstance(v, dict) or (isinstance(v, dict) and set(v) != {"4k", "2m"}):
        raise InputError(f"--cost {key}: expected " + ("a table {4k = ns, 2m = ns}" if isinstance(shape, dict)
                                                       else "a number of ns"))
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
                or not 0 <= x <= 1e12:
            raise InputError(f"--cost {key}: expected a finite number of ns in [0, 1e12], got {x!r}")
