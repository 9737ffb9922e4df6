"""Guidance strategies, selectable by name with --guard. A new strategy is one file plus one line in GUARDS, or,
from outside the package, one entry point in the `cpsample.guards` group (see docs/extending.md).

Each guard class declares its options once (`Options`, a validated dataclass whose fields carry default and help);
`GuardSpec` (sampling/spec.py) is the one way the library, the CLI, the demo and the bench choose and build one.
"""

from __future__ import annotations

import functools
from dataclasses import MISSING, fields
from importlib.metadata import entry_points

from cpsample.sampling.guards.amg import AMGGuard
from cpsample.sampling.guards.base import CFGPrediction, Guard, GuardContext, GuardOptions, NoGuard, guided_eps
from cpsample.sampling.guards.chain import ChainGuard
from cpsample.sampling.guards.classifier_guidance import ClassifierGuidanceGuard
from cpsample.sampling.guards.cpsample import CPSampleGuard
from cpsample.sampling.guards.delayed_cfg import DelayedCFGGuard, OppositeGuidanceGuard
from cpsample.sampling.guards.staged import StagedCPSampleGuard

GUARDS: dict[str, type[Guard]] = {
    "none": NoGuard,
    "cpsample": CPSampleGuard,
    "cpsample-staged": StagedCPSampleGuard,
    "amg": AMGGuard,
    "delayed-cfg": DelayedCFGGuard,
    "opposite-cfg": OppositeGuidanceGuard,
}


PLUGIN_GROUP = "cpsample.guards"  # entry points NAME = "module:GuardClass" of other installed packages


def available_guards() -> dict[str, type[Guard]]:
    """The built-in guards, then those other installed packages register in the `cpsample.guards` entry-point group
    (a plugin may not take a built-in's name)."""
    return {**_plugin_guards(), **GUARDS}


@functools.lru_cache(maxsize=None)
def _plugin_guards() -> dict[str, type[Guard]]:
    found = {}
    for entry in entry_points(group=PLUGIN_GROUP):
        loaded = entry.load()
        if not (isinstance(loaded, type) and issubclass(loaded, Guard)):
            raise TypeError(f"entry point {entry.name} = {entry.value} ({PLUGIN_GROUP}) is not a Guard subclass")
        found[entry.name] = loaded
    return found


def guard_class(name: str) -> type[Guard]:
    guards = available_guards()
    if name not in guards:
        raise ValueError(f"unknown guard {name!r}; choose one of {', '.join(guards)}")
    return guards[name]


def is_plain(guard) -> bool:
    """Whether a guard (its name, a GuardSpec or a built Guard) leaves sampling as it is (--guard none)."""
    if isinstance(guard, Guard):
        return isinstance(guard, NoGuard)
    return guard_class(getattr(guard, "name", guard)) is NoGuard


def option_rows(guards: dict[str, type[Guard]]) -> list[tuple[str, str, str, str]]:
    """(guard, option, default, meaning) for every option of every guard, as `cpsample guards` and docs/cli.md show
    them; a knob a calibration chooses shows "calibrated"."""
    rows = []
    for name, guard in guards.items():
        options = fields(guard.Options)
        if not options:
            first = (guard.__doc__ or "").strip().splitlines()
            rows.append((name, "-", "", first[0] if first else ""))
        for item in options:
            default = "" if item.default is MISSING else item.default
            calibrated = default is None and item.name in guard.Options.calibrated
            rows.append((name, item.name, "calibrated" if calibrated else str(default), item.metadata.get("help", "")))
    return rows


def describe_settings(settings: dict) -> str:
    """One line for a guard's recorded settings (`Guard.settings()`), as plots and tables title them."""
    name = settings.get("guard", "none")
    if name == "cpsample":
        return f"cpsample, alpha {settings['alpha']:g}, s {settings['scale']:g}{_cap(settings)}"
    if name == StagedCPSampleGuard.name:
        early, late = settings["early"], settings["late"]
        judged = " on x0_hat" if late.get("denoised") else ""
        return (
            f"cpsample in two stages: early s {early['scale']:g}, late{judged} alpha {late['alpha']:g}, "
            f"s {late['scale']:g}{_cap(late)}"
        )
    return name


def _cap(settings: dict) -> str:
    return "" if settings.get("max_push") is None else f", push cap {settings['max_push']:g}"


__all__ = [
    "GUARDS",
    "is_plain",
    "PLUGIN_GROUP",
    "AMGGuard",
    "CFGPrediction",
    "CPSampleGuard",
    "ChainGuard",
    "ClassifierGuidanceGuard",
    "DelayedCFGGuard",
    "Guard",
    "GuardContext",
    "GuardOptions",
    "NoGuard",
    "OppositeGuidanceGuard",
    "StagedCPSampleGuard",
    "describe_settings",
    "available_guards",
    "guard_class",
    "option_rows",
    "guided_eps",
]
