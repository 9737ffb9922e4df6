"""The README's quickstart (Python API) example runs as written, and the loaded-once model objects round-trip."""

import json
import re
from pathlib import Path

import torch

import cpsample

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Quickstart: protect a diffusers pipeline", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs_and_protects(capsys):
    namespace = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    detector, plain, protected = namespace["detector"], namespace["plain"], namespace["protected"]
    assert plain.shape == protected.shape == (100, 1, 16, 16)
    assert detector.share(plain) >= 0.2, "the bundled model copies often when sampled plainly"
    assert detector.share(protected) <= detector.share(plain) / 4
    assert "near-copies: plain" in capsys.readouterr().out
    assert cpsample.protection_of(namespace["pipe"]) is None


def test_model_objects_save_and_load_back(tmp_path):
    model = cpsample.DiffusionModel.from_pretrained("bundled")
    model.save_pretrained(tmp_path / "den")
    again = cpsample.DiffusionModel.from_pretrained(tmp_path / "den")
    assert all(torch.equal(a, b) for a, b in zip(model.unet.state_dict().values(), again.unet.state_dict().values()))
    assert again.split.members == model.split.members and len(again.members) == len(model.members)
    classifier = cpsample.Classifier.from_pretrained("bundled")
    classifier.save_pretrained(tmp_path / "clf")
    loaded = cpsample.Classifier.from_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "calibration.json").is_file(), "the calibration travels with the classifier"
    guard = cpsample.build_guard(
        "cpsample", cpsample.GuardContext(classifier=loaded)
    )  # the calibration chose two stages
    calibration = json.loads((tmp_path / "clf" / "calibration.json").read_text())
    # the late stage judges x0_hat with the selective classifier (Finding 13) or x_t with the loaded one
    late_judge = guard.guards[0].classifier if calibration["two_stage"].get("late_denoised") else loaded.model
    assert guard.settings()["late"]["max_t"] == 200 and guard.guards[1].classifier is late_judge
    assert guard.settings()["late"]["scale"] == calibration["two_stage"]["scale"]
    one_stage = cpsample.build_guard("cpsample", cpsample.GuardContext(classifier=loaded), one_stage=True)
    assert one_stage.settings()["max_t"] == calibration["settings"]["max_t"] == 500
    assert one_stage.classifier is loaded.model
