"""cpsample: classifier-protected sampling for diffusion models, with the tools to measure how much a model copies.

The Python API in one place (see README "Quickstart: protect a diffusers pipeline"); each name is imported on first
use, so `import cpsample`
stays cheap for the command line:

    model = cpsample.DiffusionModel.from_pretrained("bundled")
    pipe = cpsample.protect(DDIMPipeline(unet=model.unet, scheduler=...), "bundled")
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "DiffusionModel": "cpsample.models.pretrained",
    "Classifier": "cpsample.models.pretrained",
    "Calibrator": "cpsample.calibration",
    "CalibrationResult": "cpsample.calibration",
    "Goal": "cpsample.calibration",
    "protect": "cpsample.sampling.protect",
    "unprotect": "cpsample.sampling.protect",
    "protection_of": "cpsample.sampling.protect",
    "generate": "cpsample.sampling.generate",
    "SampleConfig": "cpsample.sampling.settings",
    "SampleResult": "cpsample.sampling.sampler",
    "load_adapter": "cpsample.sampling.adapters",
    "ADAPTERS": "cpsample.sampling.adapters",
    "build_guard": "cpsample.sampling.spec",
    "GuardSpec": "cpsample.sampling.spec",
    "GuardContext": "cpsample.sampling.guards",
    "GUARDS": "cpsample.sampling.guards",
    "NearCopyDetector": "cpsample.evaluation.detector",
    "Judge": "cpsample.evaluation.measures",
    "find_near_copies": "cpsample.evaluation.nearcopy",
}

__all__ = sorted(_API)


def imported_on_first_use(package: str, api: dict[str, str]):
    """A package's module-level __getattr__ that imports each name of api (name -> module) when it is first used, so
    importing the package (and the command line, which reads light settings modules under it) loads no torch."""

    def __getattr__(name: str):
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(api[name]), name)

    return __getattr__


__getattr__ = imported_on_first_use(__name__, _API)
