"""`spartan profile --submit` (a profile job on a worker) and `spartan cost-models register |
list | show | refit`: the cost-model registry from the command line. Client commands only
(no torch here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from spartan_service.cli.client import Client, ClientError


def profile_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/profiles body for `spartan profile --submit`'s options."""
    fractions = {"widths" if args.structure == "channels" else "densities": args.densities} \
        if args.densities else {}
    device = str(args.device).split(":", 1)[0]
    return {
        "name": args.name, "model": {"arch": args.model, "kwargs": args.kwargs},
        "data": {"dataset": args.dataset, "kwargs": args.data_kwargs}, "task": args.task,
        "structure": args.structure,
        "block": list(args.block) if args.structure == "weights" else [1, 1],
        "kernels": [args.kernel], "batch_sizes": [args.batch], "quick": args.quick,
        "device": device if device in ("cpu", "cuda") else "auto", "queue": args.queue,
        **fractions,
    }


def submit_profile(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        profile = client.submit_profile(profile_body(args))
        print(f"profile {profile['id']} {profile['status']} "
              f"({client.url}/v1/profiles/{profile['id']})")
        if not args.wait:
            return 0

        def show(current: dict[str, Any]) -> None:
            p = current.get("progress") or {}
            if p.get("phase"):
                print(f"  {current['status']}: {p.get('phase')} {p.get('layer') or ''}".rstrip(),
                      file=sys.stderr)

        profile = client.wait_profile(profile["id"], show)
        if profile["status"] != "succeeded":
            print(f"profile {profile['id']} {profile['status']}: {profile.get('error')}")
            return 1
        if args.output:
            Path(args.output).write_text(json.dumps(profile["profile"], indent=1))
            print(f"wrote {args.output}")
        hw = profile.get("hardware") or {}
        print(f"profile {profile['id']} succeeded: cost model {profile['cost_model_id']} "
              f"({hw.get('cpu') if hw.get('device') == 'cpu' else hw.get('gpu')})")
    return 0


def _read(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ClientError(f"{path} is not valid JSON: {exc}") from None


def register_body(data: Any, name: str | None) -> dict[str, Any]:
    """A profile (layers: a list) is fitted by the API; a fitted model (layers: a mapping,
    as `spartan fit` writes it) is registered as it is."""
    if not isinstance(data, dict) or "layers" not in data:
        raise ClientError("not a profile or a cost model: a JSON object with 'layers'")
    key = "cost_model" if isinstance(data["layers"], dict) else "profile"
    return {"name": name, key: data}


def _line(m: dict[str, Any]) -> str:
    name = f"{m.get('name') or '-'} v{m.get('version')}"
    return (f"{m['id']}  {name:<24} batch {m.get('batch') or '-':<5} "
            f"{m.get('hardware_label') or 'hardware unknown'}")


def cmd_cost_models(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        if args.action == "register":
            model = client.register_cost_model(register_body(_read(args.file), args.name))
            print(_line(model))
        elif args.action == "list":
            page = client.cost_models(args.hardware, args.name, args.limit)
            for m in page["data"]:
                print(_line(m))
            print(f"{page['count']} cost model(s)", file=sys.stderr)
        elif args.action == "show":
            print(json.dumps(client.cost_model(args.id), indent=2))
        else:
            model = client.refit_cost_model(args.id)
            refit = model.get("refit") or {}
            print(_line(model))
            print(f"error on {refit.get('points')} deployed model(s): "
                  f"{refit.get('mape_before', 0):.1%} -> {refit.get('mape_after', 0):.1%}")
    return 0


def add_parsers(add: Any, url_option: Any) -> None:
    p = add("cost-models", cmd_cost_models, "the cost-model registry: register, list, show, "
            "refit")
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser("register", help="register a profile (fitted by the API) or a "
                           "cost model as `spartan fit` writes it")
    r.add_argument("file")
    r.add_argument("--name", help="the next version of this name")
    url_option(r)
    r = actions.add_parser("list", help="list cost models, newest first")
    r.add_argument("--hardware", help="a fingerprint, or text in the hardware (e.g. EPYC)")
    r.add_argument("--name", help="every version of this name")
    r.add_argument("--limit", type=int, default=50)
    url_option(r)
    for action, text in (("show", "print a cost model as JSON, with its error on deployed "
                          "models"), ("refit", "fold the deployment measurements in: a new "
                                      "version")):
        r = actions.add_parser(action, help=text)
        r.add_argument("id")
        url_option(r)
