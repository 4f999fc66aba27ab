"""The cost model: what each kernel primitive costs (ns), loaded from a profile file.

A profile has three tables (bench/profiles/default.toml is the reference):

[costs]      every primitive of the model: a number (ns per event) or a table
             {4k = ns, 2m = ns} giving one operation over 4 KiB and over 2 MiB, from which a
             fixed and a per-4K-page part are derived (linear in pages);
[uncertain]  for every cost nobody has published: key = { low = V, high = V }, the documented
             plausible range (V has the cost's own shape); the value in [costs] lies inside it;
[sources]    for every key: "calibrated: ...", "cited: ..." or "estimate: ..." - where the
             figure comes from.

`gmembench calibrate` writes a profile measured on the current host, `--profile FILE`
replaces the default, `--cost KEY=VALUE` (run_suite's cost_overrides) replaces single
values.  A profile file that leaves out [uncertain] / [sources] inherits the default's entry
for every key whose value it keeps equal to the default.  Every value must be finite,
>= 0 and <= 1e12 ns (a bound that keeps every sum the engines form far from int64
overflow); anything else is bad input, reported as FILE:LINE (or `--cost KEY:`).
"""
import math
import re
import tomllib
from importlib import resources
from pathlib import Path

from bench.errors import InputError

PAGES_2M = 512
MAX_NS = 1e12          # largest value a cost may have (16.7 minutes)
SOURCE_KINDS = ("calibrated", "cited", "estimate")
PAIR = ("4k", "2m")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> line number of `key = ...` in that table (top-level keys: table "")."""
    out: dict[tuple[str, str], int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("[") and not s.startswith("[["):
            table = s.strip("[] \t").split("#")[0].strip().strip("]").strip()
            continue
        m = re.match(r'^["\']?([A-Za-z0-9_.\-]+)["\']?\s*=', s)
        if m:
            out.setdefault((table, m.group(1).split(".")[0]), n)
    return out


def _table_line(text: str, table: str) -> int | None:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().split("#")[0].strip() == f"[{table}]":
            return n
    return None


def _toml_error(e: tomllib.TOMLDecodeError) -> tuple[str, int | None]:
    msg = str(e)
    line = getattr(e, "lineno", None)
    m = re.search(r"\(at line (\d+), column \d+\)", msg)
    if m:
        line = line or int(m.group(1))
        msg = msg[:m.start()].strip()
    elif "(at end of document)" in msg:
        msg = msg.replace("(at end of document)", "at the end of the file").strip()
    return msg, line


def _check_number(x, what: str, where: str, line: int | None) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise InputError(f"{what} must be a number of ns, got {x!r}", where, line)
    if not math.isfinite(x):
        raise InputError(f"{what} is {x}; expected a finite number of ns", where, line)
    if x < 0:
        raise InputError(f"{what} is negative ({x}); costs are >= 0 ns", where, line)
    if x > MAX_NS:
        raise InputError(f"{what} is {x:g} ns, above the {MAX_NS:g} ns bound "
                         f"(expected a per-operation cost)", where, line)
    return x


def check_value(key: str, v, shape, where: str, line: int | None, what: str | None = None):
    """Validate one cost value against the shape of the default's value for `key`."""
    what = what or f"cost {key!r}"
    if isinstance(shape, dict):
        if not (isinstance(v, dict) and set(v) == set(PAIR)):
            raise InputError(f"{what} must be a table {{4k = ns, 2m = ns}}", where, line)
        for s in PAIR:
            _check_number(v[s], f"{what} ({s})", where, line)
        if v["2m"] < v["4k"]:
            raise InputError(f"{what}: the 2m figure is below the 4k figure", where, line)
        return {s: v[s] for s in PAIR}
    if isinstance(v, dict):
        raise InputError(f"{what} must be a number of ns", where, line)
    return _check_number(v, what, where, line)


def _le(a, b) -> bool:
    if isinstance(a, dict):
        return all(a[s] <= b[s] for s in PAIR)
    return a <= b


def _fmt(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{s} = {v[s]:g}" for s in PAIR) + "}"
    return f"{v:g}"


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

    def outside_range(self) -> list[str]:
        """Uncertain keys whose value in force lies outside their documented range."""
        return [k for k, (lo, hi) in self.uncertain.items()
                if not (_le(lo, self.raw[k]) and _le(self.raw[k], hi))]

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "path": self.path,
                "costs": self.raw, "overrides": self.overrides,
                "uncertain": {k: {"low": lo, "high": hi} for k, (lo, hi) in self.uncertain.items()},
                "sources": self.sources,
                "outside_range": self.outside_range()}


def _default_text() -> tuple[str, str]:
    ref = resources.files("bench") / "profiles" / "default.toml"
    return ref.read_text(), str(ref)


def _parse(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg, line = _toml_error(e)
        raise InputError(f"not valid TOML: {msg}", where, line)


def parse_cost_value(text: str):
    """A --cost VALUE: a number, an inline table {4k = ns, 2m = ns}, or low / high."""
    s = text.strip()
    if s.lower() in ("low", "high"):
        return s.lower()
    try:
        return tomllib.loads(f"v = {s}")["v"]
    except tomllib.TOMLDecodeError:
        return s


def load_profile(path: str | Path | None = None, overrides: dict | None = None) -> CostProfile:
    """Load and validate a profile (default: the built-in one), then apply `overrides`
    ({key: number | {4k, 2m} | "low" | "high"}; "key.4k" / "key.2m" replace one figure of
    a pair; low / high pick the end of the key's documented range)."""
    default_text, default_path = _default_text()
    default_doc = tomllib.loads(default_text)
    default = default_doc["costs"]
    if path is None:
        text, where, doc = default_text, default_path, default_doc
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"cannot read cost profile: {e.strerror}", where)
        except UnicodeDecodeError:
            raise InputError("cannot read cost profile: not UTF-8 text", where)
        doc = _parse(text, where)
    lines = _key_lines(text)
    costs = doc.get("costs")
    if not isinstance(costs, dict):
        raise InputError("missing [costs] table", where)
    for key in default:
        if key not in costs:
            raise InputError(f"missing cost {key!r} (every primitive of the model needs a cost)",
                             where, _table_line(text, "costs"))
    raw = {}
    for key, v in costs.items():
        line = lines.get(("costs", key))
        if key not in default:
            raise InputError(f"unknown cost {key!r} (expected one of: {', '.join(default)})",
                             where, line)
        raw[key] = check_value(key, v, default[key], where, line)

    # [uncertain]: key = { low = V, high = V }
    unc_in = doc.get("uncertain", {})
    if not isinstance(unc_in, dict):
        raise InputError("[uncertain] must be a table of key = { low = V, high = V }", where,
                         lines.get(("", "uncertain")))
    uncertain = {}
    for key, v in unc_in.items():
        line = lines.get(("uncertain", key))
        if key not in default:
            raise InputError(f"[uncertain] names unknown cost {key!r}", where, line)
        if not (isinstance(v, dict) and set(v) == {"low", "high"}):
            raise InputError(f"[uncertain] {key}: expected {{ low = V, high = V }}", where, line)
        lo = check_value(key, v["low"], default[key], where, line, f"[uncertain] {key} low")
        hi = check_value(key, v["high"], default[key], where, line, f"[uncertain] {key} high")
        if not _le(lo, hi):
            raise InputError(f"[uncertain] {key}: low {_fmt(lo)} is above high {_fmt(hi)}",
                             where, line)
        if not (_le(lo, raw[key]) and _le(raw[key], hi)):
            raise InputError(f"[uncertain] {key}: the value in [costs] ({_fmt(raw[key])}) lies "
                             f"outside [{_fmt(lo)}, {_fmt(hi)}]", where, line)
        uncertain[key] = (lo, hi)

    # [sources]: key = "calibrated: ..." | "cited: ..." | "estimate: ..."
    src_in = doc.get("sources", {})
    if not isinstance(src_in, dict):
        raise InputError("[sources] must be a table of key = \"kind: text\"", where)
    sources = {}
    for key, v in src_in.items():
        line = lines.get(("sources", key))
        if key not in default:
            raise InputError(f"[sources] names unknown cost {key!r}", where, line)
        kind = v.split(":", 1)[0].strip() if isinstance(v, str) else None
        if kind not in SOURCE_KINDS or not v.split(":", 1)[1].strip():
            raise InputError(f"[sources] {key}: expected \"calibrated: ...\", \"cited: ...\" or "
                             f"\"estimate: ...\", got {v!r}", where, line)
        sources[key] = v

    if path is not None:
        # inherit the default's documentation for the values this file keeps
        d_unc = default_doc.get("uncertain", {})
        d_src = default_doc.get("sources", {})
        for key in default:
            same = raw[key] == default[key]
            if key not in uncertain and same and key in d_unc:
                uncertain[key] = (d_unc[key]["low"], d_unc[key]["high"])
            if key not in sources:
                sources[key] = (d_src.get(key, f"estimate: no source given in {where}") if same
                                else f"estimate: value given in {where} without a source")
    else:
        missing = [k for k in default if k not in sources]
        if missing:
            raise InputError(f"[sources] has no entry for: {', '.join(missing)}", where)

    applied = {}
    for key, v in (overrides or {}).items():
        base, _, part = str(key).partition(".")
        here = f"--cost {key}"
        if base not in raw:
            raise InputError(f"unknown cost (expected one of: {', '.join(default)})", here)
        if isinstance(v, str) and v in ("low", "high"):
            if base not in uncertain:
                raise InputError(f"{v}: this cost has no documented range (uncertain costs: "
                                 f"{', '.join(uncertain) or 'none'})", here)
            lo, hi = uncertain[base]
            v = lo if v == "low" else hi
            if part:
                v = v[part] if isinstance(v, dict) and part in PAIR else v
        if part:
            if not isinstance(default[base], dict) or part not in PAIR:
                raise InputError(f"only pair costs have .4k / .2m parts", here)
            merged = dict(raw[base])
            merged[part] = v
            v = merged
        raw[base] = check_value(base, v, default[base], here, None, "value")
        applied[base] = raw[base]
        sources[base] = f"{sources[base]} [in force: --cost {base}={_fmt(raw[base])}]"
    meta = doc.get("profile", {})
    name = meta.get("name", Path(where).stem)
    if applied:
        name += " + " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(applied.items()))
    return CostProfile(name, meta.get("source", ""), where, raw, uncertain, sources, applied)
