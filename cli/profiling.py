"""`spartan profile` and `spartan fit`: thin wrappers over costmodels (and worker's models).

Imported only by those commands: profiling loads torch, fitting scikit-learn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spartan_service.jobs import catalog


def run_profile(args: argparse.Namespace) -> int:
    import torch

    from spartan_service.costmodels.io import write_json_atomic
    from spartan_service.costmodels.profiler import profile_model
    from spartan_service.zoo import build_model

    catalog.check_model(args.model)
    catalog.check_dataset(args.dataset)
    known = catalog.dataset_shape(args.dataset, {})
    if known is None:
        raise ValueError(f"dataset '{args.dataset}' has no known input shape; use a built-in "
                         f"one: {', '.join(n for n in catalog.BUILTIN_DATASETS if n != 'upload')}")
    input_shape, num_classes = known
    model = build_model(args.model, catalog.model_kwargs(args.model, args.kwargs), input_shape,
                        num_classes)
    # Random inputs of the dataset's shape: a kernel's time does not depend on the values.
    example = torch.randn(args.batch, *input_shape)
    if getattr(args, "structure", "weights") == "channels":
        from spartan_service.costmodels.structured import profile_channels

        profile = profile_channels(model, example, device=args.device, batch=args.batch,
                                   quick=args.quick, progress=True)
    else:
        profile = profile_model(model, example, block=args.block, device=args.device,
                                kernel=args.kernel, densities=args.densities, batch=args.batch,
                                quick=args.quick, progress=True)
    write_json_atomic(Path(args.output), profile)
    print(f"wrote {args.output}: {len(profile['layers'])} layers on {profile['device']}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    from spartan_service.costmodels.fit import fit_profile
    from spartan_service.costmodels.io import write_json_atomic
    from spartan_service.costmodels.plot import plot_fit
    from spartan_service.costmodels.schema import validate_profile

    profile: Any = json.loads(Path(args.profile).read_text(encoding="utf-8"))
    validate_profile(profile)
    model = fit_profile(profile)
    write_json_atomic(Path(args.output), model)
    unit = model.get("unit", "ms")
    for name, layer in model["layers"].items():
        per = "per channel pair" if layer.get("structure") == "channels" else "per block"
        print(f"{name}: {layer['intercept']:.4g} {unit} + {layer['slope']:.4g} {unit} {per}"
              f"  (R^2 {layer['r2']:.3f}, MAPE {layer['mape']:.1%})")
    print(f"wrote {args.output}")
    if args.plot:
        plot_fit(profile, model, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0
