"""GuardSpec: a guard's name, its validated options and where they came from; the one reader and writer of a
classifier's calibration.json.

A guard is chosen in one shape everywhere (CLI, `protect()`, calibration grids, the demo, the bench):

    spec = GuardSpec.create("cpsample", alpha=0.1)            # knobs left out: the classifier's calibration
    spec = GuardSpec.parse("amg", ["threshold=0.9"])          # the CLI's --option NAME=VALUE strings
    spec = GuardSpec.from_pretrained("my-classifier")         # what `cpsample calibrate` chose for it
    guard = spec.build(GuardContext(model=..., classifier="my-classifier"))

Options a guard's `Options` lists in `calibrated` (CPSample's alpha, scale, tau, max_t) may be left as None: `build`
fills them from the classifier's calibration.json, else from the guard's `uncalibrated` defaults (said once per
classifier). Where the calibration chose another guard for the default (its `variants`: CPSample's "two_stage" entry
names cpsample-staged), a spec with no knob given builds that one. The guard classes never touch the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cpsample.sampling.guards import Guard, GuardContext, GuardOptions, guard_class
from cpsample.settings import bounds_text, out_of_bounds

CALIBRATION_FILE = "calibration.json"
logger = logging.getLogger(__name__)
_told_uncalibrated: set[tuple] = set()


@dataclass(frozen=True)
class GuardSpec:
    """A guard's name + validated options + their source ("given", a calibration file, "uncalibrated defaults")."""

    name: str
    options: GuardOptions
    source: str = "given"

    @classmethod
    def create(cls, name: str, **options) -> "GuardSpec":
        """Options left out (or None) take the guard's defaults; an option the guard lacks is an error."""
        options_class = guard_class(name).Options
        given = {key: value for key, value in options.items() if value is not None}
        unknown = sorted(set(given) - set(options_class.names()))
        if unknown:
            known = ", ".join(options_class.names()) or "none"
            raise ValueError(f"guard {name!r} has no option {', '.join(unknown)} (its options: {known})")
        declared = typing.get_type_hints(options_class)
        return cls(
            name, options_class(**{key: _as_declared(key, value, declared[key]) for key, value in given.items()})
        )

    @classmethod
    def parse(cls, name: str, items: list[str] | None = None, **flags) -> "GuardSpec":
        """The CLI's --option NAME=VALUE strings, typed by the guard's own declaration, merged with dedicated flags
        (None: unset); a value given both ways is refused."""
        return cls.create(name, **parse_option_strings(name, items, **flags))

    @classmethod
    def from_pretrained(cls, classifier_dir, variant: str = "default", **overrides) -> "GuardSpec":
        """CPSample as the classifier's calibration.json chose it (classifier_dir: a folder or a bundled name):
        variant "default" (one or two stages, as calibrated) or "one-stage" (the paper's rule with its calibrated
        knobs); overrides replace knobs."""
        if variant not in ("default", "one-stage"):
            raise ValueError(f"unknown variant {variant!r}; choose 'default' or 'one-stage'")
        one_stage = {"one_stage": True} if variant == "one-stage" else {}
        return cls.create("cpsample", **overrides, **one_stage).resolved(classifier_folder(classifier_dir))

    def save_pretrained(self, classifier_dir, details: dict | None = None) -> Path:
        """Write this (resolved, one-stage CPSample) spec as the classifier's calibration.json, with `details` (what
        was measured; a "two_stage" entry there makes cpsample-staged the default)."""
        knobs = {name: getattr(self.options, name) for name in self.options.calibrated}
        missing = [name for name, value in knobs.items() if value is None and name != "max_t"]
        if not self.options.calibrated or missing:
            raise ValueError(f"only a guard with calibrated knobs, all given, can be saved (missing: {missing})")
        return write_calibration(classifier_dir, knobs, details or {})

    def resolved(self, classifier_dir) -> "GuardSpec":
        """This spec with its calibrated knobs filled from classifier_dir's calibration.json (or the uncalibrated
        defaults), or the calibrated variant (another guard) where the calibration chose one and no knob is given."""
        options = self.options
        if not options.calibrated:
            return self
        record = read_calibration(classifier_dir)
        if not options.knobs_given():
            for entry, variant in options.variants.items():
                chosen = variant_settings(classifier_dir, record, entry, variant)
                if chosen is not None:
                    path = str(Path(classifier_dir) / CALIBRATION_FILE)
                    return GuardSpec(variant, guard_class(variant).Options(**chosen), path)
        given = {name: getattr(options, name) for name in options.calibrated}
        knobs = calibrated_knobs(classifier_dir, record, options, given)
        return GuardSpec(self.name, replace(options, **knobs), calibration_source(classifier_dir, given))

    def build(self, context: GuardContext | None = None) -> Guard:
        """The guard, its calibrated knobs resolved against context.classifier's folder."""
        context = context or GuardContext()
        spec = self.resolved(classifier_folder(context.classifier)) if self.options.calibrated else self
        guard = guard_class(spec.name).from_options(spec.options, context)
        if self.options.calibrated:  # say where the knobs came from (reprs and run records show it)
            guard.calibration = spec.source
            for stage in getattr(guard, "guards", []):
                stage.calibration = f"{spec.source} (two_stage)"  # the stages' knobs are the variant entry's
        return guard


def build_guard(name: str, context: GuardContext | None = None, **options) -> Guard:
    """A guard by name: `build_guard("cpsample", GuardContext(classifier="bundled"), alpha=0.1)`."""
    return GuardSpec.create(name, **options).build(context)


def resolve_guard(guard: "str | GuardSpec | Guard", context: GuardContext, **options) -> Guard:
    """A ready Guard as it is, a spec built, or a name built with its options; options given with a ready guard or
    a spec are an error."""
    if isinstance(guard, str):
        return build_guard(guard, context, **options)
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ValueError(
            f"options {', '.join(given)} apply to a guard given by name, not to a built {guard.name} guard"
        )
    return guard.build(context) if isinstance(guard, GuardSpec) else guard


def require_classifier(guard: str, classifier, flag: str = "--guard") -> None:
    """A guard that uses a classifier is given one by name: never a silent fallback to the bundled demo's."""
    try:
        uses_one = guard_class(guard).uses_classifier
    except ValueError:
        return  # an unknown name is refused where it is read, in that command's own words
    if classifier is None and uses_one:
        raise ValueError(
            f"{flag} {guard} needs --classifier: a classifier trained on this model's members (`cpsample "
            "train-classifier --model MODEL`), or 'bundled' for the bundled demo model"
        )


def classifier_folder(classifier) -> Path | None:
    """The folder of a guard's classifier (a folder, "bundled", a loaded Classifier), without loading it; None for
    an in-memory network."""
    from cpsample.models.bundle import resolve_model_dir

    if classifier is None:
        classifier = "bundled"
    if isinstance(classifier, (str, Path)):
        return resolve_model_dir(classifier, "classifier")
    return getattr(classifier, "folder", None)


def parse_option_strings(name: str, items: list[str] | None, **flags) -> dict:
    """--option NAME=VALUE strings typed by the guard's own declaration, merged with dedicated flags (None: unset).
    The values are validated when the spec is created; a name the guard does not have is refused here."""
    options_class = guard_class(name).Options
    declared = typing.get_type_hints(options_class)
    types = {option: declared[option] for option in options_class.names()}
    parsed = {}
    for item in items or []:
        option, separator, text = item.partition("=")
        option = option.strip().replace("-", "_")
        if not separator or not option:
            raise ValueError(f"--option {item!r}: write it as NAME=VALUE, e.g. --option alpha=0.1")
        if option not in types:
            known = ", ".join(options_class.names()) or "none"
            raise ValueError(f"guard {name!r} has no option {option} (its options: {known})")
        parsed[option] = _typed(option, text.strip(), types[option])
    given = {key: value for key, value in flags.items() if value is not None}
    both = sorted(set(given) & set(parsed))
    if both:
        raise ValueError(f"{', '.join(both)} given both as a flag and as --option; give it once")
    return {**given, **parsed}


def _as_declared(name: str, value, declared):
    """A value given from Python as the option declares it: text is read as the command line reads it ('false' ->
    False, never a truthy string), and a bool option takes only a bool."""
    choices = _choices(declared)
    if isinstance(value, str) and str not in choices:
        return _typed(name, value, declared)
    if bool in choices and not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"option {name}: expected true or false, got {value!r}")
    return value


def _choices(declared) -> tuple:
    """The types an option's declaration allows (int | None -> (int, NoneType))."""
    import types

    union = isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union
    return typing.get_args(declared) if union else (declared,)


def _typed(name: str, text: str, declared):
    """'0.1' -> 0.1 for a float option, 'true' -> True for a bool one, 'none' -> None where None is allowed."""
    choices = _choices(declared)
    if text.lower() == "none" and type(None) in choices:
        return None
    kind = next(choice for choice in choices if choice is not type(None))
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ValueError(f"--option {name}={text}: expected {kind.__name__}") from None


# --- calibration.json: {"settings": {alpha, scale, tau, max_t}, "two_stage": {...}, "measured": ..., ...} ---


def calibrated_knobs(classifier_dir, record: dict | None, options: GuardOptions, given: dict) -> dict:
    """The calibrated knobs to guard with: those given, the rest from the calibration record, else the guard's
    uncalibrated defaults (said once per classifier). A calibrated max_t belongs to its alpha: with another alpha
    given, every step is checked (unless max_t is given)."""
    defaults = options.uncalibrated(is_latent_classifier(classifier_dir))
    base = defaults if record is None else {**defaults, **record["settings"]}
    required = [name for name in options.calibrated if name != "max_t"]
    missing = tuple(name for name in required if given.get(name) is None)
    if record is None and missing and (str(classifier_dir), missing) not in _told_uncalibrated:
        _told_uncalibrated.add((str(classifier_dir), missing))
        kind = "the paper's default" if defaults is options.uncalibrated(False) else "the paper's latent-space setting"
        used = ", ".join(f"{name} {base[name]:g}" for name in missing)
        logger.warning(
            f"{classifier_dir} has no {CALIBRATION_FILE}; CPSample uses {used} ({kind}; not given). Run "
            f"`cpsample calibrate --classifier {classifier_dir}` to choose them for this model."
        )
    chosen = {name: base[name] if given.get(name) is None else given[name] for name in required}
    same_alpha = given.get("alpha") is None or given["alpha"] == base["alpha"]
    given_max_t = given.get("max_t")
    chosen["max_t"] = given_max_t if given_max_t is not None else (base.get("max_t") if same_alpha else None)
    return chosen


def cpsample_settings(classifier_dir, alpha=None, scale=None, tau=None, max_t=None) -> dict:
    """CPSample's knobs for a classifier folder: those given, the rest from its calibration.json, else defaults."""
    options = guard_class("cpsample").Options()
    given = {"alpha": alpha, "scale": scale, "tau": tau, "max_t": max_t}
    return calibrated_knobs(classifier_dir, read_calibration(classifier_dir), options, given)


def is_latent_classifier(classifier_dir) -> bool:
    """Trained by `train-latent-classifier` on a Stable Diffusion pipeline's VAE latents (its cpsample.json says)."""
    from cpsample.provenance import recorded_command

    return classifier_dir is not None and recorded_command(classifier_dir) == "train-latent-classifier"


def calibration_source(classifier_dir, given: dict) -> str:
    """Where a one-stage guard's knobs came from, in words: the calibration file, the uncalibrated defaults, or the
    caller (given: knob -> value or None for "not given")."""
    named = [name for name in ("alpha", "scale", "tau", "max_t") if given.get(name) is not None]
    if all(given.get(name) is not None for name in ("alpha", "scale", "tau")):
        return "given"
    path = None if classifier_dir is None else Path(classifier_dir) / CALIBRATION_FILE
    source = str(path) if path is not None and path.exists() else "uncalibrated defaults"
    return source + (f" ({', '.join(named)} given)" if named else "")


def variant_settings(classifier_dir, record: dict | None, entry: str, variant: str) -> dict | None:
    """The options of the guard `variant` as the calibration's `entry` chose them (CPSample's "two_stage": the
    cpsample-staged options of `calibrate --early-classifier`), checked; None where the calibration has no entry."""
    staged = None if record is None else record.get(entry)
    if not staged:
        return None
    path = Path(classifier_dir) / CALIBRATION_FILE
    fix = _FIX_CALIBRATION.format(folder=classifier_dir) + ", or pass --option one_stage=true"
    if not isinstance(staged, dict):
        raise ValueError(f"{path}: its {entry} entry is not a set of options; {fix}")
    for name, value in staged.items():
        problem = knob_problem(name, value)
        if name.endswith("_classifier") and not isinstance(value, (str, type(None))):
            problem = "it must be a classifier folder"
        if problem:
            raise ValueError(f"{path}: {entry} {name} is {json.dumps(value)}, but {problem}; {fix}")
    for role in ("early", "late"):  # the stages' own classifiers, recorded as folders
        folder = staged.get(f"{role}_classifier", "bundled" if role == "early" else None)
        if folder not in (None, "bundled") and not Path(folder).is_dir():
            raise ValueError(
                f"{path} chose two stages with the {role} classifier {folder}, which is not there; put it back, "
                "rerun `cpsample calibrate`, or pass --option one_stage=true"
            )
    try:
        guard_class(variant).Options(**staged)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its {entry} entry makes no two-stage guard ({error}); {fix}") from None
    return dict(staged)


def read_calibration(classifier_dir) -> dict | None:
    """The classifier folder's calibration.json ({"settings": {...}, "measured": {...}, ...}), or None."""
    if classifier_dir is None:
        return None
    path = Path(classifier_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        settings = record["settings"]
        if not {"alpha", "scale", "tau"} <= set(settings):
            raise KeyError("alpha, scale and tau")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a cpsample calibration ({error}); rerun `cpsample calibrate` or delete it"
        ) from None
    for name in ("alpha", "scale", "tau", "max_t"):
        problem = knob_problem(name, settings.get(name))
        if problem:
            raise ValueError(
                f"{path}: {name} is {json.dumps(settings.get(name))}, but {problem}; "
                f"{_FIX_CALIBRATION.format(folder=classifier_dir)}"
            )
    return record


def write_calibration(classifier_dir, settings: dict, details: dict) -> Path:
    """Replace the classifier's calibration.json atomically (a killed run leaves the old one whole)."""
    path = Path(classifier_dir) / CALIBRATION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, **details}, indent=2, default=str))
    tmp.replace(path)
    return path


_FIX_CALIBRATION = (
    "correct it in that file, rerun `cpsample calibrate --classifier {folder}`, or delete the file "
    "(the defaults then apply)"
)
# A calibration.json may record these as null ("none": every step, uncapped, unsmoothed).
_MAY_BE_NULL = ("max_t", "max_push", "smooth_push")


def knob_problem(name: str, value) -> str | None:
    """What is wrong with a calibrated knob's value (its one-stage "settings" or its "two_stage" entry, keyed without
    the stage prefix), in words, by the range CPSample's option declares; None: nothing, or not a CPSample knob."""
    from cpsample.sampling.guards.cpsample import CPSampleOptions

    knob = name.removeprefix("early_")
    item = next((item for item in dataclasses.fields(CPSampleOptions) if item.name == knob), None)
    bounds = None if item is None else bounds_text(item)
    if bounds is None:
        return None
    if value is None:
        return None if knob in _MAY_BE_NULL else "it must be a number"
    whole = "int" in str(item.type)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (whole and not float(value).is_integer()) or not math.isfinite(value):
        return "it must be a whole timestep" if whole else "it must be a finite number"
    if out_of_bounds(item, value):
        return f"CPSample's {knob} must be {'in ' if bounds.startswith('[') else ''}{bounds}"
    return None


def guard_options(name: str, **values) -> GuardOptions:
    """The named guard's validated options (None: the default); an option the guard lacks is an error."""
    return GuardSpec.create(name, **values).options
