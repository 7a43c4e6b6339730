"""Rare-image oversampling: a share of each epoch's draws go to images holding a rare class,
drawn from (seed, epoch) only, so order, ranks and resume stay exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segopt.data.class_weights import class_pixels_per_image, pixel_totals
from segopt.data.rare_images import RareImages
from segopt.data.resumable import ResumableSampler
from segopt.data.transforms import Augment
from segopt.lightning import SegDataModule
from tests.test_data_crops import _arrays

#: 10 images, 3 classes: class 1 in images 2 and 7, class 2 in image 5 only.
TABLE = np.zeros((10, 3), np.int64)
TABLE[:, 0] = 100
TABLE[[2, 7], 1] = 4
TABLE[5, 2] = 1


def test_holders_are_the_images_holding_each_rare_class() -> None:
    rare = RareImages.from_pixels(TABLE, [1, 2], 0.5)
    assert rare.holders == ((2, 7), (5,))


def test_no_share_keeps_the_order() -> None:
    order = list(range(10))
    assert RareImages.from_pixels(TABLE, [1, 2], 0.0).resample(order, 3, 0) == order
    assert RareImages(0.5, ()).resample(order, 3, 0) == order


def test_every_draw_goes_to_a_rare_image_at_share_one_and_the_classes_share_the_draws() -> None:
    rare = RareImages.from_pixels(TABLE, [1, 2], 1.0)
    drawn = [i for epoch in range(200) for i in rare.resample(list(range(10)), 3, epoch)]
    assert set(drawn) == {2, 5, 7}
    # each class gets about half of the draws, though class 2 is in one image and class 1 in two
    assert drawn.count(5) / len(drawn) == pytest.approx(0.5, abs=0.03)
    assert drawn.count(2) / len(drawn) == pytest.approx(0.25, abs=0.03)


def test_a_share_replaces_about_that_share_of_the_places_the_same_way_for_the_same_seed_and_epoch() -> None:
    rare = RareImages.from_pixels(TABLE, [1, 2], 0.33)
    order = list(range(1000, 1000 + 3000))  # indices that no rare image has
    once, again = rare.resample(order, 3, 4), rare.resample(order, 3, 4)
    assert once == again
    replaced = sum(a != b for a, b in zip(once, order))
    assert replaced / len(order) == pytest.approx(0.33, abs=0.03)
    assert rare.resample(order, 3, 5) != once and rare.resample(order, 4, 4) != once


def test_per_image_counts_add_up_to_the_totals() -> None:
    table = class_pixels_per_image(_arrays().split("train", 255), 4, 255)
    assert table.tolist() == [[9680, 250, 50, 20], [9700, 250, 50, 0]]
    pixels, present = pixel_totals(table)
    assert pixels.tolist() == [19380, 500, 100, 20]
    assert present.tolist() == [20000, 20000, 20000, 10000]


def _sampled(sampler: ResumableSampler) -> list[int]:
    return [item.index for item in sampler]


def test_ranks_split_one_resampled_order_and_a_skip_resumes_inside_it() -> None:
    dataset = list(range(10))
    rare = RareImages.from_pixels(TABLE, [1, 2], 0.5)
    whole = ResumableSampler(dataset, seed=3, batch_size=2, rare_images=rare)
    whole.set_epoch(1)
    expected = rare.resample(torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist(), 3, 1)
    assert _sampled(whole) == expected
    ranks = [ResumableSampler(dataset, seed=3, batch_size=2, num_replicas=2, rank=r, rare_images=rare) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    assert _sampled(ranks[0]) == expected[0::2] and _sampled(ranks[1]) == expected[1::2]
    whole.skip = 2
    assert _sampled(whole) == expected[4:]


def test_the_datamodule_oversamples_the_images_of_its_rare_classes() -> None:
    # _arrays: image 0 holds sign (0.1 %), both hold pole (0.5 %); rare under 1 %: pole and sign
    dm = SegDataModule(_arrays(), num_workers=0, rare_image_share=1.0, augment=Augment(rare_class_below=0.01))
    assert dm.rare_images == RareImages(1.0, ((0, 1), (0,)))
    assert SegDataModule(_arrays(), num_workers=0).rare_images is None


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused_naming_the_key(share: float) -> None:
    with pytest.raises(ValueError) as error:
        SegDataModule(_arrays(), num_workers=0, rare_image_share=share)
    assert str(error.value) == f"data.rare_image_share is {share}; give a probability in [0, 1], e.g. 0.33, or 0 for none"
