"""Real datasets: a checksummed registry, format readers, loaders and downloads.

The data files are never part of the package. They are read from a data folder,
as scikit-learn and torchvision do: the ``data_home`` argument, else the
``SPRED_DATA`` environment variable, else a per-user cache folder (see
:func:`get_data_home`). Every file's sha256 is checked on load.

>>> from spred.datasets import list_datasets, dataset_info
>>> list_datasets(kind="gene expression")[:3]
['ALLAML', 'GLIOMA', 'Prostate_GE']
>>> dataset_info("mnist_test").shape
(10000, 784)
"""

from spred.datasets._base import (
    ChecksumError,
    DatasetNotFoundError,
    fetch_file,
    get_data_home,
    sha256_file,
    verify_file,
)
from spred.datasets._loaders import fetch_dataset, load_cifar10, load_dataset, load_fashion_mnist_subset, load_mnist
from spred.datasets._readers import read_arff, read_gds_soft, read_idx, read_mat
from spred.datasets._registry import KINDS, DataFile, DatasetInfo, dataset_info, list_datasets
from spred.datasets._synthetic import make_orthogonal_design, make_sparse_target
from spred.datasets._transforms import RandomCropFlip

__all__ = [
    "KINDS",
    "ChecksumError",
    "DataFile",
    "DatasetInfo",
    "DatasetNotFoundError",
    "RandomCropFlip",
    "dataset_info",
    "fetch_dataset",
    "fetch_file",
    "get_data_home",
    "list_datasets",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist_subset",
    "load_mnist",
    "make_orthogonal_design",
    "make_sparse_target",
    "read_arff",
    "read_gds_soft",
    "read_idx",
    "read_mat",
    "sha256_file",
    "verify_file",
]
