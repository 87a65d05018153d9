"""The argument language of every `configs/*.py:ARG` file, strict (big_vision's `parse_arg`).

ARG is a comma-separated list of items: `key=value` (the value read as a Python literal,
else kept as text) and bare words (a flag set to True, or the value of the one positional
key, e.g. the sampler's preset `512`). Each config file declares its keys with their
defaults, and optionally their choices (`Choice`); an unknown key, a value outside its
choices or of the wrong type fails with a message that lists the valid ones.

    parse_arg("stage=vaid,smoke", stage=Choice("ethd", STAGES), variant="tiny", smoke=False)
    -> {"stage": "vaid", "variant": "tiny", "smoke": True}
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Choice:
    """A key whose value must be one of `choices` (compared as text)."""

    default: Any
    choices: tuple


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _check(key: str, value: Any, spec: Any, where: str) -> Any:
    if isinstance(spec, Choice):
        hit = [c for c in spec.choices if str(c) == str(value)]
        if not hit:
            raise ValueError(f"{where}: unknown {key} {value!r}; choose one of {', '.join(map(str, spec.choices))}")
        return hit[0]
    if spec is None or isinstance(value, type(spec)) or (isinstance(spec, float) and type(value) is int):
        return float(value) if isinstance(spec, float) else value
    if isinstance(spec, tuple) and isinstance(value, list):
        return tuple(value)
    raise ValueError(f"{where}: {key}={value!r} is not a {type(spec).__name__} (default {spec!r})")


def parse_arg(arg: str | None, *, where: str = "config argument", positional: str | None = None,
              **spec: Any) -> dict[str, Any]:
    """`arg` -> {key: value} for every key of `spec` (its default where not given); see the
    module docstring. `positional`: the key a bare word that is not a flag sets."""
    out = {k: (v.default if isinstance(v, Choice) else v) for k, v in spec.items()}
    valid = ", ".join(sorted(spec))
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep:
            if key in spec and spec[key] is False:
                out[key] = True
                continue
            if positional is not None:
                out[positional] = _check(positional, key, spec[positional], where)
                continue
            raise ValueError(f"{where}: {key!r} is not a flag; flags: "
                             f"{', '.join(sorted(k for k, v in spec.items() if v is False)) or 'none'}")
        if key not in spec:
            raise ValueError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        out[key] = _check(key, _literal(value) if not isinstance(spec[key], (str, Choice)) else value, spec[key],
                          where)
    return out
