"""Shared fixtures: the bundled real MNIST subset and tiny models trained on it in seconds."""

from __future__ import annotations

import os

import pytest
import torch

# Respect OMP_NUM_THREADS when set (shared machines); otherwise use up to two cores, as on CI.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist16():
    from cpsample.data import load_dataset

    return load_dataset("mnist", image_size=16)


@pytest.fixture(scope="session")
def bundled_dirs():
    """The shipped denoiser and classifier folders (real checkpoints, trained by the commands in their cpsample.json)."""
    from cpsample.models.bundle import resolve_model_dir

    return resolve_model_dir("bundled", "denoiser"), resolve_model_dir("bundled", "classifier")
