"""The `spartan` command: serve, worker, submit, status, list, cancel, logs, sweep, download,
profile, fit, demo.

Client commands take the API's URL from --url or SPARTAN_URL (default http://127.0.0.1:8000)
and a token from SPARTAN_TOKEN. Commands that need torch import it inside the command only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spartan_service.cli import commands, cost_models
from spartan_service.cli.client import Client, ClientError
from spartan_service.cli.progress import JobBar
from spartan_service.jobs.settings import get_settings


def _queues(text: str | None) -> list[str] | None:
    return [q.strip() for q in text.split(",") if q.strip()] if text else None


def cmd_serve(args: argparse.Namespace) -> int:
    from spartan_service.cli.serve import serve

    return serve(get_settings(), args.host, args.port, args.workers, args.insecure,
                 queues=args.queues, port_file=args.port_file)


def cmd_worker(args: argparse.Namespace) -> int:
    from spartan_service.worker.main import exit_now, run_worker

    run_worker(_queues(args.queues), args.concurrency, args.hostname)
    exit_now()  # skips the interpreter's ~1.5 s teardown of torch
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spartan_service.cli.demo import demo

    return demo(get_settings(), args.port, args.exit)


def _read_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{path} is not valid JSON: {exc}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    spec = _read_json(args.spec)
    with Client(args.url) as client:
        job = client.submit(spec)
        print(f"job {job['id']} {job['status']} ({client.page_url('jobs', job['id'])})")
        for warning in job.get("warnings") or []:
            print(f"warning: {warning}", file=sys.stderr)
        if not args.wait:
            return 0
        bar = JobBar(job["id"])
        try:
            job = client.wait(job["id"], bar.update)
        finally:
            bar.close()
        url = client.page_url("jobs", job["id"])
    print(f"job {job['id']} {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
    print(f"job page: {url}")
    return 0 if job["status"] == "succeeded" else 1


def cmd_status(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        print(json.dumps(client.job(args.job_id), indent=2))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    target = Path(args.output or args.job_id)
    with Client(args.url) as client:
        artifacts = client.artifacts(args.job_id)
        if not artifacts:
            print(f"job {args.job_id} has no artifacts yet", file=sys.stderr)
            return 1
        for a in artifacts:
            try:
                path = client.download(args.job_id, a["name"], confined(target, a["name"]))
            except ValueError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            print(path)
    return 0


def confined(folder: Path, name: str) -> Path:
    """Where artifact `name` (as the server says) goes: a plain file name inside `folder`.
    A name with a path in it (`../x`, `/etc/x`, `a/b`), or that leaves the folder once
    resolved, is refused: the server's word is not trusted with the user's files."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or Path(name).is_absolute()):
        raise ValueError(f"artifact name {name!r} is not a plain file name")
    target = folder / name
    if target.resolve().parent != folder.resolve():
        raise ValueError(f"artifact name {name!r} leaves the folder {folder}")
    return target


def _block(text: str) -> tuple[int, int]:
    rows, _, cols = text.lower().partition("x")
    try:
        return int(rows), int(cols or rows)
    except ValueError:
        msg = f"block must look like RxC (e.g. 4x4), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def cmd_profile(args: argparse.Namespace) -> int:
    if args.submit:  # a profile job on a worker of the queue, on its own hardware
        from spartan_service.cli.cost_models import submit_profile

        return submit_profile(args)
    if not args.output:
        raise ValueError("-o/--output is needed (or --submit, to profile on a worker)")
    from spartan_service.cli.profiling import run_profile

    return run_profile(args)


def cmd_fit(args: argparse.Namespace) -> int:
    from spartan_service.cli.profiling import run_fit

    return run_fit(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spartan", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    def url_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="API URL (default: $SPARTAN_URL or http://127.0.0.1:8000)")

    p = add("serve", cmd_serve, "run the API with N embedded workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--port-file", type=Path, default=None,
                   help="write the port bound to this file once listening")
    p.add_argument("--workers", type=int, default=1,
                   help="embedded worker processes (0 when workers run elsewhere)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback host without SPARTAN_API_TOKENS")
    p.add_argument("--queues", default="cpu,gpu",
                   help="queues of the embedded workers (default cpu,gpu: on a machine without "
                   "a GPU, a cuda job then fails with a message instead of waiting forever)")

    p = add("worker", cmd_worker, "run a worker that takes jobs from the queue")
    p.add_argument("--queues", help="comma-separated: cpu, gpu (default: what this machine has)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--hostname", help="worker name (default: from the host name)")

    p = add("submit", cmd_submit, "submit a job spec (JSON file, or - for stdin)")
    p.add_argument("spec")
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    url_option(p)

    p = add("status", cmd_status, "print a job as JSON")
    p.add_argument("job_id")
    url_option(p)

    commands.add_parsers(add, url_option, _floats)

    p = add("download", cmd_download, "download a job's artifacts")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", help="directory (default: ./JOB_ID)")
    url_option(p)

    p = add("profile", cmd_profile, "time each layer's sparse kernel at several densities")
    p.add_argument("--model", required=True, help="architecture, as in a job spec")
    p.add_argument("--kwargs", type=json.loads, default={}, help="model kwargs as JSON")
    p.add_argument("--dataset", default="digits",
                   help="dataset giving the example batch: a built-in one; with --submit any "
                   "a job takes (npy, imagefolder, hf, fashion-mnist)")
    p.add_argument("--data-kwargs", type=json.loads, default={},
                   help="with --submit: the dataset's kwargs as JSON, as in a job spec")
    p.add_argument("--task", default="classification",
                   choices=["classification", "regression", "causal_lm"],
                   help="with --submit: the model's head (Hugging Face models)")
    p.add_argument("--block", type=_block, default=(1, 1), help="RxC, e.g. 4x4")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--kernel", default="auto", help="sparse kernel to time (default: auto)")
    p.add_argument("--densities", type=_floats, help="comma-separated, e.g. 0.05,0.1,0.3,1")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="fewer repeats (for a smoke test)")
    p.add_argument("--structure", choices=["weights", "channels"], default="weights",
                   help="channels: time each layer at kept widths, for structured jobs")
    p.add_argument("-o", "--output", help="profile.json to write")
    p.add_argument("--submit", action="store_true",
                   help="run it as a profile job on a worker (its own hardware), which fits "
                   "and registers the cost model")
    p.add_argument("--name", help="with --submit: the cost model's name (next version)")
    p.add_argument("--queue", default="auto", choices=["auto", "cpu", "gpu"],
                   help="with --submit: the workers' queue")
    p.add_argument("--wait", action="store_true", help="with --submit: until it ends")
    url_option(p)

    cost_models.add_parsers(add, url_option)

    p = add("fit", cmd_fit, "fit a cost model from a profile")
    p.add_argument("profile")
    p.add_argument("-o", "--output", required=True, help="cost-model JSON to write")
    p.add_argument("--plot", help="also draw measured vs fitted latency to this PNG")

    p = add("demo", cmd_demo, "start the service, run a demo job, keep serving")
    p.add_argument("--port", type=int, help="0: any free port (default: 8000 if free, else any)")
    p.add_argument("--exit", action="store_true", help="stop once the demo job has ended")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    try:
        code: int = args.func(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
