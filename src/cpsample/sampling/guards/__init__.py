"""Guidance strategies, selectable by name with --guard. A new strategy is one file plus one line in GUARDS.

Each guard class declares its options once (`Options`, a validated dataclass whose fields carry default and help);
`build_guard(name, context, **options)` is the one way the library, the CLI, the demo and the bench build one.
"""

from __future__ import annotations

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


def guard_class(name: str) -> type[Guard]:
    if name not in GUARDS:
        raise ValueError(f"unknown guard {name!r}; choose one of {', '.join(GUARDS)}")
    return GUARDS[name]


def guard_options(name: str, **values) -> GuardOptions:
    """The named guard's validated options; None means "the default", an option the guard lacks is an error."""
    options_class = guard_class(name).Options
    given = {key: value for key, value in values.items() if value is not None}
    unknown = sorted(set(given) - set(options_class.names()))
    if unknown:
        known = ", ".join(options_class.names()) or "none"
        raise ValueError(f"guard {name!r} has no option {', '.join(unknown)} (its options: {known})")
    return options_class(**given)


def build_guard(name: str, context: GuardContext | None = None, **options) -> Guard:
    """A guard by name: `build_guard("cpsample", GuardContext(classifier="bundled"), alpha=0.1)`."""
    return guard_class(name).from_options(guard_options(name, **options), context or GuardContext())


def resolve_guard(guard: str | Guard, context: GuardContext, **options) -> Guard:
    """A ready Guard as it is, or a name built with its options; options given with a ready guard are an error."""
    if isinstance(guard, str):
        return build_guard(guard, context, **options)
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ValueError(
            f"options {', '.join(given)} apply to a guard given by name, not to a built {guard.name} guard"
        )
    return guard


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
    "build_guard",
    "describe_settings",
    "guard_class",
    "guard_options",
    "guided_eps",
    "resolve_guard",
]
