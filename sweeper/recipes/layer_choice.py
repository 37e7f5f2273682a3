"""Per-layer choices a recipe config can hold (what the sensitivity stage and mixed precision
use): `layers` (quantize only these; None: all), `float_layers` (kept in float),
`sensitivity_ranking` (most sensitive first, filled by the sweep's stage) and
`protected_layers` (how many of the ranking's first layers are kept at `protected_bits`,
None: in float) while the rest use the trial's bits.

Layers are named by module path ("model.decoder.layers.0.fc1"), so one ranking reads the
same in every trial of a sweep. A recipe config has these five fields, calls
`check_layer_fields` in its __post_init__, and asks `layer_bits` which width each of the
model's layers gets.
"""
from __future__ import annotations

from ..config import check_int
from ..errors import ConfigError

LAYER_NAME_FIELDS = ("layers", "float_layers", "sensitivity_ranking")


def check_layer_fields(config, where: str, bits: int | None, allowed_bits) -> None:
    """Checks and normalises `config`'s layer fields (lists become tuples: Tune and JSON hand
    lists, frozen configs hold tuples): names are non-empty strings, protected_layers fits
    the ranking, protected_bits is one of `allowed_bits` and above the trial's `bits`.
    Raises ConfigError (one line)."""
    for name in LAYER_NAME_FIELDS:
        value = getattr(config, name)
        if value is None and name == "layers":
            continue
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(where, name, value, "a list of layer names (module names such as 'model.decoder.layers.0.fc1')")
        object.__setattr__(config, name, tuple(value))
    check_int(where, "protected_layers", config.protected_layers, 0, 1 << 20)
    if config.protected_bits is not None and (isinstance(config.protected_bits, bool) or config.protected_bits not in allowed_bits):
        raise ConfigError(where, "protected_bits", config.protected_bits, f"one of {tuple(allowed_bits)} or None (float)")
    if config.protected_layers > len(config.sensitivity_ranking):
        raise ConfigError(where, "protected_layers", config.protected_layers,
                          f"at most the {len(config.sensitivity_ranking)} layers of sensitivity_ranking"
                          + ("" if config.sensitivity_ranking else
                             " (none: give the experiment a sensitivity stage, Experiment(sensitivity=...))"))
    if config.protected_bits is not None and bits is not None and config.protected_bits <= bits:
        raise ConfigError(where, "protected_bits", config.protected_bits, f"more than the trial's {bits} bits, or None (float)")


def has_layer_choice(config) -> bool:
    """Returns whether `config` quantizes anything other than every layer at its bits."""
    return (config.layers is not None or bool(config.float_layers) or bool(config.protected_layers)
            or config.protected_bits is not None)


def layer_bits(config, where: str, layers: list[str], bits: int) -> dict[str, int]:
    """Returns {layer: weight bits} over the model's `layers` (module names, all of them):
    the chosen ones (`config.layers`, or all) less float_layers, the protected ones at
    protected_bits (left out when in float), the rest at `bits`. Raises ConfigError naming
    a layer the model lacks."""
    known = set(layers)
    for field_name in LAYER_NAME_FIELDS:
        unknown = [n for n in (getattr(config, field_name) or ()) if n not in known]
        if unknown:
            raise ConfigError(where, field_name, unknown[0], "a layer of the model: " + ", ".join(layers[:6])
                              + (f", ... ({len(layers)} in all)" if len(layers) > 6 else ""))
    chosen = [n for n in layers if (config.layers is None or n in config.layers) and n not in config.float_layers]
    protected = set(config.sensitivity_ranking[:config.protected_layers])
    out = {}
    for n in chosen:
        if n not in protected:
            out[n] = bits
        elif config.protected_bits is not None:
            out[n] = config.protected_bits
    return out


def describe_layer_choice(config) -> str:
    """Returns the label suffix of `config`'s layer choice (e.g. ", 2 most sensitive at
    8-bit"), "" when it has none."""
    label = ""
    if config.layers is not None:
        label += f", only {len(config.layers)} layer(s)" if len(config.layers) != 1 else f", only {config.layers[0]}"
    if config.float_layers:
        label += f", {len(config.float_layers)} layer(s) in float" if len(config.float_layers) != 1 else \
            f", {config.float_layers[0]} in float"
    if config.protected_layers:
        label += f", {config.protected_layers} most sensitive at {config.protected_bits or 'float'}" \
                 f"{'-bit' if config.protected_bits else ''}"
    return label
