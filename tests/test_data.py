import hashlib
import time

import numpy as np
import pytest
import torch

from course_utils import data


def test_mnist_files_match_published_md5():
    for name, md5 in data.MNIST_MD5.items():
        raw = (data._HERE / name).read_bytes()
        assert hashlib.md5(raw).hexdigest() == md5


def test_raw_mnist_is_the_published_test_set():
    images, labels = data.load_mnist_raw()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    counts = np.bincount(labels, minlength=10)
    assert counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_split_is_fixed_stratified_and_disjoint():
    d = data.load_mnist(scale="raw")
    assert d.x_train.shape == (8000, 784) and d.x_test.shape == (2000, 784)
    assert torch.bincount(d.y_test).tolist() == [200] * 10
    _, labels = data.load_mnist_raw()
    train_idx, test_idx = data._stratified_indices(labels)
    assert len(set(train_idx)) == 8000 and len(set(test_idx)) == 2000
    assert not set(train_idx) & set(test_idx)
    images, _ = data.load_mnist_raw()
    assert np.array_equal(d.x_test[0].numpy(), images[test_idx[0]].reshape(-1).astype(np.float32))


def test_split_is_deterministic():
    a = data._split_cached.__wrapped__("unit", True)
    b = data._split_cached.__wrapped__("unit", True)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_scales_and_shapes():
    raw = data.load_mnist("raw")
    assert raw.x_train.max() == 255 and raw.x_train.min() == 0
    unit = data.load_mnist("unit", flatten=False)
    assert unit.x_train.shape == (8000, 1, 28, 28) and float(unit.x_train.max()) == 1.0
    std = data.load_mnist("standard")
    assert abs(float(std.x_train.mean())) < 1e-4 and abs(float(std.x_train.std()) - 1) < 1e-4
    # test data is transformed with the training statistics, so its mean is not exactly 0
    assert float(std.x_test.mean()) != pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="scale must be"):
        data.load_mnist("minmax")


def test_loading_is_fast():
    data._split_cached.cache_clear()
    data.load_mnist_raw.cache_clear()
    t = time.perf_counter()
    data.load_mnist()
    assert time.perf_counter() - t < 1.0


def test_batches_are_seeded_and_full():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    a = [yb.tolist() for _, yb in data.batches(x, y, 4, seed=1, epochs=2)]
    b = [yb.tolist() for _, yb in data.batches(x, y, 4, seed=1, epochs=2)]
    assert a == b and len(a) == 4 and all(len(v) == 4 for v in a)
    assert sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no sample twice in an epoch
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, y, 0))


def test_synthetic_sets():
    X, y, w = data.badly_scaled_2d(n=500, scales=(1.0, 100.0))
    assert X.shape == (500, 2) and y.shape == (500,)
    ratio = X.std(0)[1] / X.std(0)[0]
    assert 50 < ratio < 200
    x = data.with_outliers(n=100, frac=0.05)
    assert x.shape == (100, 1) and (x > 10).sum() == 5
