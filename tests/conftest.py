"""Shared fixtures: a tiny synthetic dataset in the release layout, generated once per test session."""

import pytest


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """60 train + 40 test images at 64 px (query pools: 30 train, 10 test)."""
    from oshp.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic(root, train=60, test=40, size=64, seed=3, workers=1, progress=False)
