"""Client commands of `spartan` beyond submit/status/download: list, cancel, logs, sweep."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from spartan_service.cli.client import TERMINAL, Client, ClientError
from spartan_service.jobs.status import JobStatus


def _num(value: Any, pct: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value * 100:.1f}%" if pct else f"{value:.3g}"


def _table(rows: list[list[str]], out: Any) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


def _budget(spec: dict[str, Any]) -> str:
    cost = spec.get("cost_model") or {}
    if cost.get("budget_ms") is not None:
        return f"{cost['budget_ms']:g} ms"
    return _num((spec.get("sparsity") or {}).get("budget"), pct=True)


def cmd_list(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        page = client.jobs(args.status, args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    if not page["data"]:
        print("no jobs")
        return 0
    rows = [["ID", "NAME", "STATUS", "PROGRESS", "METHOD", "BUDGET", "ACCURACY", "LATENCY_MS",
             "CREATED"]]
    for job in page["data"]:
        spec, progress = job.get("spec") or {}, job.get("progress") or {}
        results = job.get("results") or {}
        total = progress.get("total_steps")
        done = f"{progress.get('step', 0)}/{total}" if total else "-"
        rows.append([job["id"][:8], (job.get("name") or "-")[:40], job["status"], done,
                     (spec.get("sparsity") or {}).get("method", "-"), _budget(spec),
                     _num(results.get("accuracy"), pct=True),
                     _num(results.get("measured_latency")), job["created_at"][:19]])
    _table(rows, sys.stdout)
    if page["count"] > len(page["data"]):
        print(f"({len(page['data'])} of {page['count']}; --limit for more)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    code = 0
    with Client(args.url) as client:
        for item in args.ids:
            try:
                if args.sweep:
                    sweep = client.cancel_sweep(item)
                    print(f"sweep {item}: cancelling {sweep['counts']}")
                else:
                    job = client.cancel(item)
                    state = "cancelling" if job["status"] == "running" else job["status"]
                    print(f"job {item}: {state}")
            except ClientError as exc:
                print(f"error: {item}: {exc}", file=sys.stderr)
                code = 1
    return code


def _log_line(record: dict[str, Any]) -> str:
    return f"{record['created_at'][:23]} {record['level']:<7} {record['logger']}: " \
           f"{record['message']}"


def cmd_logs(args: argparse.Namespace) -> int:
    since = 0
    with Client(args.url) as client:
        while True:
            page = client.logs(args.job_id, since)
            for record in page["data"]:
                print(_log_line(record), flush=True)
                since = max(since, record["id"])
            if page["count"] > len(page["data"]):
                continue  # more already there
            if not args.follow or client.job(args.job_id)["status"] in TERMINAL:
                if args.follow:  # lines written just before the end
                    for record in client.logs(args.job_id, since)["data"]:
                        print(_log_line(record), flush=True)
                return 0
            time.sleep(1.0)


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def sweep_table(sweep: dict[str, Any], out: Any) -> None:
    unit = sweep.get("latency_unit", "ms")
    rows = [["BUDGET", "METHOD", "STATUS", "ACCURACY", f"MEASURED_{unit.upper()}",
             f"PREDICTED_{unit.upper()}", "PARETO", "JOB"]]
    for p in sweep["points"]:
        budget = "-" if p["budget"] is None else f"{p['budget']:g}"
        rows.append([budget, p["method"] + (f"/{p['structure']}" if p.get("structure") else ""),
                     p["status"], _num(p["accuracy"], pct=True), _num(p["measured_latency"]),
                     _num(p["predicted_latency"]), "*" if p["pareto"] else "", p["job_id"]])
    _table(rows, out)


def cmd_sweep(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text(encoding="utf-8")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{args.spec} is not valid JSON: {exc}") from None
    body: dict[str, Any] = {"spec": spec, "budgets": args.budgets}
    if args.methods:
        body["methods"] = _words(args.methods)
    if args.structures:
        body["structures"] = _words(args.structures)
    if args.name:
        body["name"] = args.name
    with Client(args.url) as client:
        sweep = client.create_sweep(body)
        print(f"sweep {sweep['id']}: {len(sweep['points'])} jobs queued "
              f"({client.page_url('sweeps', sweep['id'])})")
        if not args.wait:
            return 0
        seen: dict[str, str] = {}

        def report(current: dict[str, Any]) -> None:
            for p in current["points"]:  # one line per change of a point's state
                if seen.get(p["job_id"]) != p["status"]:
                    seen[p["job_id"]] = p["status"]
                    budget = "dense" if p["budget"] is None else f"budget {p['budget']:g}"
                    print(f"  {p['method']} {budget}: {p['status']}", file=sys.stderr,
                          flush=True)

        sweep = client.wait_sweep(sweep["id"], report)
    sweep_table(sweep, sys.stdout)
    print(f"sweep {sweep['id']} {sweep['status']}")
    return 0 if sweep["status"] == "succeeded" else 1


def add_parsers(add: Any, url_option: Any, floats: Any) -> None:
    """Registers the commands on the `spartan` parser (spartan_service.cli.main)."""
    p = add("list", cmd_list, "list jobs, newest first")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    url_option(p)

    p = add("cancel", cmd_cancel, "cancel jobs (or, with --sweep, sweeps)")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--sweep", action="store_true", help="the ids are sweeps")
    url_option(p)

    p = add("logs", cmd_logs, "print a job's log (warnings, errors with traceback)")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    url_option(p)

    p = add("sweep", cmd_sweep, "train a spec at several budgets (a sweep)")
    p.add_argument("spec", help="job spec JSON file, or - for stdin")
    p.add_argument("--budgets", type=floats, required=True, help="e.g. 0.05,0.1,0.2")
    p.add_argument("--methods", help="e.g. spartan,dense (dense adds one reference point)")
    p.add_argument("--structures", help="e.g. weights,channels")
    p.add_argument("--name")
    p.add_argument("--wait", action="store_true", help="wait and print the points' table")
    url_option(p)
