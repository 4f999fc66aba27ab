"""`gmembench sweep --qualify [QSPEC]`: a qualification fleet.  One task per worker
machine of the cluster, pinned to that machine and (for the host backend) holding its host
lock, runs the qualification spec there (bench.qualify: load_spec, run_suite, evaluate,
write_verdict); the verdicts come back and are written together into
results/fleet/<spec>-<time>/ (one verdict JSON per machine, fleet.json for all).

Exit 0: every machine passes; 1: some machine fails a check; 2: bad input or a machine could
not run the spec.
"""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import tempfile
from pathlib import Path

from bench.errors import InputError
from bench.results import atomic_write_json


def qualify_here(spec_text: str, spec_name: str) -> dict:
    """On the worker: run the spec on this machine, return its verdicts and host facts."""
    from bench.qualify import evaluate, load_spec
    from bench.results import load_results
    from bench.runner import run_suite
    tmp = Path(tempfile.mkdtemp(prefix="gmembench-qualify-"))
    try:
        spec_file = tmp / spec_name
        spec_file.write_text(spec_text, encoding="utf-8")
        spec = load_spec(spec_file)
        kw = {}
        if spec["repetitions"]:
            kw["repetitions"] = spec["repetitions"]
        if spec["seed"] is not None:
            kw["seed"] = spec["seed"]
        out = run_suite(spec["workloads"], spec["strategies"], backend=spec["backend"],
                        params=dict(spec["params"]), out_dir=tmp / "results", quick=spec["quick"],
                        progress_enabled=False, report=False, **kw)
        results = load_results(out)
        verdicts = evaluate(spec, results)
        return {"hostname": socket.gethostname(), "host": results.get("host"),
                "fidelity": sorted({r.get("fidelity", "?") for r in results["runs"]}),
                "pass": all(v["pass"] for v in verdicts), "verdicts": verdicts,
                "results": results}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_fleet(args) -> int:
    from bench.qualify import default_spec_path, format_verdicts, load_spec
    from bench.sweep.engine import HOSTLOCK, open_client, worker_hosts
    path = Path(args.qualify) if args.qualify else default_spec_path()
    spec = load_spec(path)          # bad spec: FILE:LINE before anything runs
    text = path.read_text(encoding="utf-8")
    host_backend = spec["backend"] == "host"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / "fleet" / f"{spec['name']}-{stamp}"
    with open_client(args.scheduler, args.scheduler_file, args.workers, host_backend) as client:
        hosts = worker_hosts(client)
        futures = {}
        for host, ws in sorted(hosts.items()):
            if host_backend:
                ws = [w for w in ws if w["resources"].get(HOSTLOCK, 0) >= 1]
                if not ws:
                    print(f"{host}: no worker offers {HOSTLOCK}: not qualified (skipped)")
                    continue
            kw = {"resources": {HOSTLOCK: 1}} if host_backend else {}
            futures[host] = client.submit(qualify_here, text, path.name, pure=False,
                                          workers=[ws[0]["address"]], allow_other_workers=False, **kw)
        print(f"fleet qualification {spec['name']!r} ({path}): {len(futures)} machines, backend {spec['backend']}")
        verdicts, errors = {}, {}
        for host, fut in futures.items():
            try:
                verdicts[host] = fut.result()
            except Exception as e:
                errors[host] = f"{type(e).__name__}: {e}"
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for host, v in sorted(verdicts.items()):
        results = v.pop("results")
        atomic_write_json(out / f"{v['hostname']}.results.json", results)
        atomic_write_json(out / f"{v['hostname']}.verdict.json", v)
        failed = [x for x in v["verdicts"] if not x["pass"]]
        print(f"\n== {v['hostname']} ({host}), kernel {(v.get('host') or {}).get('kernel', '?')}, "
              f"fidelity {', '.join(v['fidelity'])}: {'PASS' if v['pass'] else 'FAIL'} "
              f"({len(v['verdicts']) - len(failed)}/{len(v['verdicts'])} checks)")
        print(format_verdicts(v["verdicts"]))
        summary.append({"machine": host, "hostname": v["hostname"], "pass": v["pass"],
                        "checks": len(v["verdicts"]), "failed": len(failed)})
    for host, e in errors.items():
        print(f"\n== {host}: could not run the spec: {e}")
        summary.append({"machine": host, "pass": None, "error": e})
    atomic_write_json(out / "fleet.json", {"spec": str(path), "spec_name": spec["name"],
                                           "backend": spec["backend"], "machines": summary})
    print(f"\nfleet: {sum(1 for s in summary if s['pass'])} of {len(summary)} machines pass; {out}/fleet.json")
    if errors or not summary:
        if not summary:
            raise InputError("no machine could run the qualification")
        return 2
    return 0 if all(s["pass"] for s in summary) else 1
