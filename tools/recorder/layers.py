"""--layers: 'all', indices (negative counts from the end) and inclusive ranges."""

import re

from .errors import RecorderError


def parse_layer_spec(spec):
    """Syntax check of --layers; returns a list of ('all',) / ('index', i) / ('range', a, b)."""
    spec = spec.strip()
    if spec == "all":
        return [("all",)]
    items = []
    for part in spec.split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+", part):
            items.append(("index", int(part)))
        elif re.fullmatch(r"\d+-\d+", part):
            a, b = (int(x) for x in part.split("-"))
            if a > b:
                raise ValueError(f"--layers: range '{part}' is empty (start after end)")
            items.append(("range", a, b))
        else:
            raise ValueError(f"--layers: '{part}' is not a layer index, a range A-B or 'all'")
    return items


def resolve_layers(spec, num_layers):
    """The sorted, distinct layer indices that `spec` names in a model with `num_layers` layers."""
    chosen = set()
    for item in parse_layer_spec(spec):
        if item[0] == "all":
            chosen.update(range(num_layers))
        elif item[0] == "index":
            i = item[1]
            j = i + num_layers if i < 0 else i
            if not 0 <= j < num_layers:
                raise RecorderError(f"--layers: layer {i} does not exist; the model has {num_layers} layers "
                                    f"(0 to {num_layers - 1}, or -1 to -{num_layers})")
            chosen.add(j)
        else:
            _, a, b = item
            if b >= num_layers:
                raise RecorderError(f"--layers: range {a}-{b} goes past the last layer {num_layers - 1}")
            chosen.update(range(a, b + 1))
    return sorted(chosen)


# --------------------------------------------------------------------------------------------
# Prompts
