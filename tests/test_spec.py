"""GuardSpec: a guard's name and validated options, resolved from and saved to a classifier's calibration.json."""

import json
import shutil

import pytest

from cpsample.models.bundle import resolve_model_dir
from cpsample.sampling.guards import GuardContext
from cpsample.sampling.spec import CALIBRATION_FILE, GuardSpec, read_calibration


def test_from_pretrained_is_what_the_calibration_chose():
    shipped = read_calibration(resolve_model_dir("bundled", "classifier"))
    default = GuardSpec.from_pretrained("bundled")
    assert default.name == "cpsample-staged" and default.source.endswith(CALIBRATION_FILE)
    assert {key: getattr(default.options, key) for key in shipped["two_stage"]} == shipped["two_stage"]
    one_stage = GuardSpec.from_pretrained("bundled", variant="one-stage")
    assert one_stage.name == "cpsample"
    assert {key: getattr(one_stage.options, key) for key in shipped["settings"]} == shipped["settings"]
    overridden = GuardSpec.from_pretrained("bundled", scale=3.0)  # a knob given: the one-stage rule, that knob
    assert (overridden.name, overridden.options.scale, overridden.options.alpha) == ("cpsample", 3.0, 0.1)
    assert overridden.source.endswith("(scale given)")
    with pytest.raises(ValueError, match="unknown variant"):
        GuardSpec.from_pretrained("bundled", variant="two")


def test_a_spec_from_pretrained_builds_the_guard_the_name_alone_builds():
    context = GuardContext(classifier="bundled")
    by_name = GuardSpec.create("cpsample").build(context)
    by_spec = GuardSpec.from_pretrained("bundled").build(context)
    assert by_spec.settings() == by_name.settings() and by_name.name == "cpsample-staged"


def test_save_pretrained_writes_what_from_pretrained_reads(tmp_path):
    folder = tmp_path / "clf"
    shutil.copytree(resolve_model_dir("bundled-rgb", "classifier"), folder)
    (folder / CALIBRATION_FILE).unlink()
    spec = GuardSpec.create("cpsample", alpha=0.2, scale=12.0, tau=0.01, max_t=300)
    path = spec.save_pretrained(folder, {"measured": {"near_copy_share": 0.01}})
    record = json.loads(path.read_text())
    assert record["settings"] == {"alpha": 0.2, "scale": 12.0, "tau": 0.01, "max_t": 300}
    assert record["measured"] == {"near_copy_share": 0.01}
    loaded = GuardSpec.from_pretrained(folder)
    assert (loaded.options.alpha, loaded.options.scale, loaded.options.tau, loaded.options.max_t) == (
        0.2,
        12.0,
        0.01,
        300,
    )
    with pytest.raises(ValueError, match="calibrated knobs"):
        GuardSpec.create("amg").save_pretrained(folder)


def test_parse_types_option_strings_by_the_guards_declaration():
    spec = GuardSpec.parse("cpsample", ["max_push=2", "cap-x0=true", "max_t=none"], alpha=0.2)
    assert (spec.options.max_push, spec.options.cap_x0, spec.options.max_t, spec.options.alpha) == (
        2.0,
        True,
        None,
        0.2,
    )
    with pytest.raises(ValueError, match="has no option calibrated"):
        GuardSpec.parse("cpsample", ["calibrated=1"])  # a class attribute of the options is no option
    with pytest.raises(ValueError, match="given both as a flag and as --option"):
        GuardSpec.parse("cpsample", ["alpha=0.1"], alpha=0.2)


def test_text_values_from_python_are_read_as_the_command_line_reads_them():
    """GuardSpec.create(..., despecify="false") once kept the string, which is truthy: the guard ran with the option
    on. Text is now typed by the option's declaration, and a bool option takes only a bool."""
    options = GuardSpec.create("amg", despecify="false", sim_scale=3.0).options
    assert options.despecify is False and options.sim_scale == 3.0
    assert GuardSpec.create("cpsample", adaptive="true").options.adaptive is True
    with pytest.raises(ValueError, match="expected true or false"):
        GuardSpec.create("amg", despecify=1)
    with pytest.raises(ValueError, match="expected float"):
        GuardSpec.create("amg", sim_scale="high")
