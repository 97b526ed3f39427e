"""Resource admission: what a job will need, estimated before it runs, against per-queue limits.

At submit the catalog knows the built-in models' weight shapes and the built-in datasets'
sizes (no torch), and an upload's record knows its arrays: parameters, activation memory for a
batch, dataset bytes and steps are estimated and a job over a limit is refused with a 422 that
names the limit. What only the built model or the loaded data can tell (plugins, Hugging Face,
torchvision) the worker checks with `check_built` before training, failing the job with the
same kind of message.

The memory estimate is deliberately rough (a job that would need tens of GiB is refused, one
that needs 2 or 3 GiB is not): parameters x PARAM_COPIES (weights, gradients, AdamW's two
moments, the Sparsifier's dense copy, soft mask and scores), activations x ACTIVATION_COPIES
for a batch (kept for backward, and their gradients), the dataset as float32 twice (loaded,
then standardised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spartan_service.jobs import catalog

PARAM_COPIES = 8
ACTIVATION_COPIES = 3
FLOAT = 4
# Examples in the built-in datasets that take no size argument.
FASHION_TRAIN, FASHION_TEST = 60_000, 10_000
DIGITS_EXAMPLES = 1797


@dataclass
class Estimate:
    """What a job will need; None where it cannot be known before the worker builds it."""

    params: int | None = None
    activation_bytes: int | None = None  # one training batch, forward and backward
    dataset_bytes: int | None = None
    steps: int | None = None

    @property
    def memory_bytes(self) -> int | None:
        if self.params is None or self.activation_bytes is None or self.dataset_bytes is None:
            return None
        return (self.params * PARAM_COPIES * FLOAT + self.activation_bytes
                + 2 * self.dataset_bytes)


@dataclass(frozen=True)
class Limits:
    params: int
    steps: int
    memory_bytes: int
    dataset_bytes: int


def parse_queue_limits(text: str) -> dict[str, int]:
    """`"N"` (every queue) or `"cpu:N,gpu:M"` (a queue without an entry: no limit, unless a
    bare `N` is given too, e.g. `"N,gpu:M"`). Raises ValueError."""
    out: dict[str, int] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        queue, sep, value = part.rpartition(":")
        number = int(value.replace("_", ""))
        if number <= 0:
            raise ValueError(f"limit {part!r} must be a positive integer")
        out[queue.strip() if sep else "*"] = number
    if not out:
        raise ValueError("no limit given")
    return out


def limit_for(limits: dict[str, int], queue: str) -> int | None:
    return limits.get(queue, limits.get("*"))


def _activation_elements(arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...],
                         num_classes: int) -> int:
    """Rough count of the activations one example keeps for backward in a built-in model."""
    kw = catalog.model_kwargs(arch, kwargs)
    if arch == "mlp":
        return math.prod(input_shape) + 2 * sum(kw["hidden"]) + num_classes
    c, h, w = catalog.as_image(input_shape)
    if arch == "cnn":
        return c * h * w + sum(3 * out * h * w for out in kw["channels"]) + num_classes
    if arch == "resnet":
        n = max((kw["depth"] - 2) // 6, 0)
        total, width = c * h * w + 3 * kw["width"] * h * w, kw["width"]
        for stage in range(3):
            scale = 2 ** stage
            area = max(h // scale, 1) * max(w // scale, 1)
            total += n * 2 * 3 * width * scale * area  # two convs, each with norm and relu
        return total + num_classes
    if arch == "vit":
        ph, pw = catalog.vit_patch((h, w), kw["patch"])
        tokens = (h // ph) * (w // pw) + 1
        d, hidden = kw["dim"], kw["dim"] * kw["mlp_ratio"]
        per_block = tokens * (8 * d + 2 * hidden) + kw["heads"] * tokens * tokens
        return c * h * w + kw["depth"] * per_block + num_classes
    raise ValueError(f"'{arch}' is not a built-in model")


def _dataset_size(dataset: str, kwargs: dict[str, Any],
                  upload_tensors: dict[str, Any] | None) -> tuple[int, int] | None:
    """(examples, bytes of x as float32) when known before loading."""
    if dataset == "upload":
        x = (upload_tensors or {}).get("x")
        if not x or not x.get("shape"):
            return None
        shape = [int(d) for d in x["shape"]]
        return shape[0], math.prod(shape) * FLOAT
    known = catalog.dataset_shape(dataset, kwargs)
    if known is None:
        return None
    kw = catalog.dataset_kwargs(dataset, kwargs)
    if dataset == "fashion-mnist":  # held as bytes (uint8 pixels), the test set beside
        examples = kw["limit"] or FASHION_TRAIN
        return examples, (examples + (kw["val_limit"] or FASHION_TEST)) * math.prod(known[0])
    examples = DIGITS_EXAMPLES if dataset == "digits" else int(kw["num_samples"])
    return examples, examples * math.prod(known[0]) * FLOAT


def steps_for(examples: int, val_fraction: float, batch_size: int, epochs: int) -> int:
    train = max(examples - int(round(examples * val_fraction)), 1)
    return math.ceil(train / batch_size) * epochs


def estimate(spec: Any, upload_tensors: dict[str, Any] | None = None) -> Estimate:
    """What the job spec (a jobs.spec.JobSpec) will need, as far as it is known at submit."""
    out = Estimate()
    size = _dataset_size(spec.data.dataset, spec.data.kwargs, upload_tensors)
    t = spec.training
    if size is not None:
        examples, out.dataset_bytes = size
        val = 0.0 if spec.data.dataset == "fashion-mnist" else spec.data.val_fraction
        steps = math.ceil(steps_for(examples, val, t.batch_size, 1) / t.grad_accum) * t.epochs
        out.steps = steps if t.max_steps is None else min(steps, t.max_steps)
    arch = spec.model.arch
    if arch not in catalog.MODEL_KWARGS:
        return out
    if spec.data.dataset == "upload":
        x, y = (upload_tensors or {}).get("x"), (upload_tensors or {}).get("y")
        if not x or not y:
            return out
        input_shape: tuple[int, ...] = tuple(int(d) for d in x["shape"][1:])
        num_classes = 2  # unknown until the labels are read; the head is small anyway
    else:
        known = catalog.dataset_shape(spec.data.dataset, spec.data.kwargs)
        if known is None:
            return out
        input_shape, num_classes = known
    try:
        shapes = catalog.weight_shapes(arch, spec.model.kwargs, input_shape, num_classes)
        elements = _activation_elements(arch, spec.model.kwargs, input_shape, num_classes)
    except ValueError:
        return out  # the spec's own checks report it
    out.params = sum(math.prod(s) + s[0] for s in shapes.values())  # weights and biases
    out.activation_bytes = t.batch_size * elements * FLOAT * ACTIVATION_COPIES
    return out


def problems(found: Estimate, limits: Limits) -> list[tuple[str, str]]:
    """(field, message) for each limit the estimate goes over."""
    out: list[tuple[str, str]] = []
    gib = 1024**3
    if found.params is not None and found.params > limits.params:
        out.append(("model", f"the model has about {found.params:,} parameters; this queue's "
                             f"limit is {limits.params:,} (SPARTAN_MAX_JOB_PARAMS)"))
    if found.steps is not None and found.steps > limits.steps:
        out.append(("training", f"the job would train {found.steps:,} steps; this queue's "
                                f"limit is {limits.steps:,} (SPARTAN_MAX_JOB_STEPS): fewer "
                                "epochs or a larger batch_size"))
    if found.dataset_bytes is not None and found.dataset_bytes > limits.dataset_bytes:
        out.append(("data", f"the dataset takes about {found.dataset_bytes / gib:.1f} GiB; "
                            f"this queue's limit is {limits.dataset_bytes / gib:.1f} GiB "
                            "(SPARTAN_MAX_JOB_DATASET_BYTES)"))
    memory = found.memory_bytes
    if memory is not None and memory > limits.memory_bytes:
        out.append(("training", f"the job needs about {memory / gib:.1f} GiB of memory "
                                f"(model, batch of activations, data); this queue's limit is "
                                f"{limits.memory_bytes / gib:.1f} GiB "
                                "(SPARTAN_MAX_JOB_MEMORY_BYTES): a smaller batch_size or model"))
    return out


def check_built(params: int, dataset_bytes: int, steps: int, limits: Limits) -> str | None:
    """The worker's check, once the model is built and the data loaded (before training):
    why the job cannot run here, or None."""
    found = Estimate(params=params, dataset_bytes=dataset_bytes, steps=steps)
    over = problems(found, limits)
    if not over:
        return None
    return "refused before training: " + "; ".join(message for _, message in over)
