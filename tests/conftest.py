"""Shared fixtures: small datasets in the real on-disk formats."""

from pathlib import Path

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest runs beside other work.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    from tests.fixtures import write_cifar_fixture

    root = tmp_path_factory.mktemp("cifar10")
    write_cifar_fixture(root, dataset="cifar10", n_train=600, n_test=200, seed=0)
    return root
