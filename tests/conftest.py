"""Shared fixtures: a tiny synthetic dataset in the release layout, generated once per test session."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """60 train + 80 test images at 64 px.

    Query pools: 30 train, 30 test. The meta-test pair rule is shrunk to 1 query x 2 supports per class
    (the dataset's oshp_dataset.json says so), since 80 images cannot give 150 pairs per class.
    """
    from oshp.data.layout import ReleaseLayoutDataset, write_dataset_meta
    from oshp.data.synth.generate import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ds = generate_synthetic(root, train=60, test=80, size=64, seed=3, workers=1, progress=False)
    write_dataset_meta(root, {**ds.meta, "train_query_pool": 30, "test_query_pool": 30,
                              "queries_per_class": 1, "supports_per_query": 2})
    return ReleaseLayoutDataset.open(root)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: on a busy 2-core machine, 2 threads fighting another job are ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
