import pickle

import numpy as np
import pytest
from cifar_files import write_cifar10, write_cifar100

from eemlflow.errors import EemlflowError
from eemlflow.training.datasets import load_data


def test_cifar10_reader_loads_the_on_disk_format(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=20, test=30)
    data = load_data("cifar10", tmp_path)
    assert (len(data.train), len(data.eval), data.num_classes) == (100, 30, 10)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    first = raw["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)  # R, G, B planes -> HWC
    image, label = data.train[0]
    assert np.array_equal(np.asarray(image), first) and label == raw["labels"][0]
    assert image.size == (32, 32) and image.mode == "RGB"


def test_cifar100_reader_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path, train=120, test=40)
    data = load_data("cifar100", tmp_path)
    assert (len(data.train), len(data.eval), data.num_classes) == (120, 40, 100)
    raw = pickle.loads((folder / "test").read_bytes())
    assert [data.eval[i][1] for i in range(5)] == raw["fine_labels"][:5]


def test_missing_cifar_files_are_named_with_where_to_put_them(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(EemlflowError, match=r"CIFAR-10 files missing in .*cifar-10-batches-py: data_batch_3\. "
                                            r"Download cifar-10-python.tar.gz"):
        load_data("cifar10", tmp_path)


def test_a_corrupt_batch_is_reported_not_a_traceback(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "train").write_bytes(b"not a pickle")
    with pytest.raises(EemlflowError, match="is not a CIFAR batch"):
        load_data("cifar100", tmp_path)


def test_digits_are_real_images_split_80_20():
    data = load_data("digits")
    assert len(data.train) + len(data.eval) == 1797 and len(data.eval) == 359
    assert sorted(set(data.eval.labels.tolist())) == list(range(10))
    assert data.train.images.max() == 255 and not data.synthetic


def test_synthetic_is_marked():
    assert load_data("synthetic").synthetic
