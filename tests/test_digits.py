"""The shared digits data, models and training loop (tutorials_pkg.digits)."""

import pytest
import torch

from tutorials_pkg.digits import (
    digits_classifier,
    load_digits_tensors,
    split_train_test,
    train_epoch,
)


def test_images_and_vectors_are_the_same_pixels():
    images, labels = load_digits_tensors()
    vectors, same_labels = load_digits_tensors(flatten=True)
    assert images.shape == (1797, 1, 8, 8) and vectors.shape == (1797, 64)
    assert torch.equal(images.flatten(1), vectors) and torch.equal(labels, same_labels)
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_digits_split_is_disjoint_and_complete():
    x_train, y_train, x_test, y_test = split_train_test(*load_digits_tensors(), test_fraction=0.25)
    assert x_train.shape[1:] == (1, 8, 8) and len(x_train) + len(x_test) == 1797
    assert len(x_test) == 449 and len(y_train) == len(x_train) and len(y_test) == len(x_test)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    train_rows = {tuple(row.tolist()) for row in x_train.flatten(1)}
    overlap = sum(tuple(row.tolist()) in train_rows for row in x_test.flatten(1))
    assert overlap < 10  # only digits that happen to be drawn identically
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_train_test(*load_digits_tensors(), test_fraction=1.5)


def test_train_epoch_lowers_the_loss_and_is_repeatable():
    x, y = load_digits_tensors(flatten=True)

    def run():
        torch.manual_seed(0)
        model = digits_classifier(dropout=0.0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        order = torch.Generator().manual_seed(0)
        return [train_epoch(model, optimizer, x, y, order) for _ in range(3)]

    first = run()
    assert first[-1] < first[0] / 2
    assert run() == first  # same seeds, same losses to the last bit
