"""Shared fixtures: the bundled real MNIST subset and tiny models trained on it in seconds."""

from __future__ import annotations

import pytest
import torch

# The test models are tiny: one thread beats two that contend for the cores (measured 4-7x faster on a
# shared 2-core machine, and no slower on a free one).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist16():
    from cpsample.data import load_dataset

    return load_dataset("mnist", image_size=16)


@pytest.fixture(scope="session")
def bundled_dirs():
    """The shipped denoiser and classifier folders (real checkpoints, trained by the commands in their
    cpsample.json)."""
    from cpsample.models.bundle import resolve_model_dir

    return resolve_model_dir("bundled", "denoiser"), resolve_model_dir("bundled", "classifier")


@pytest.fixture
def attack_app():
    """A scratch Typer app holding only the `attack` commands, standing in for cpsample's main app."""
    import typer

    from cpsample.cli.attack import register

    app = typer.Typer()

    @app.callback()
    def main():
        """Scratch app standing in for cpsample's main app."""

    register(app)
    return app
