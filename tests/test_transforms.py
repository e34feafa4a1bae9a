"""Joint augmentation of section 6.1: scale, crop, flip with the left/right swap."""

import numpy as np
import pytest
import torch

from oshp.data.transforms import RandomHorizontalFlipSwap, RandomScale, apply_joint, to_tv, training_transform
from oshp.data.vocab import ATR


def person_halves(h=40, w=60):
    """Image whose left half is red, right half blue; label: image-left = right-arm (15), image-right = left-arm (14)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2, 0] = 255
    image[:, w // 2:, 2] = 255
    label = np.full((h, w), 14, np.uint8)
    label[:, : w // 2] = 15
    return image, label


def test_flip_swaps_ids_with_the_pixels():
    image, label = person_halves()
    flip = RandomHorizontalFlipSwap(ATR.flip_lut, p=1.0)
    img, mask = flip(*to_tv(image, label))
    assert img[2, :, 0].max() == 255 and img[0, :, 0].max() == 0  # the blue half moved to the image's left
    # the mirrored person faces the other way: the arm now on the image's left is again their right arm,
    # so a symmetric label map is unchanged by flip + swap
    assert mask[:, 0].unique().tolist() == [15] and mask[:, -1].unique().tolist() == [14]
    assert torch.equal(torch.from_numpy(np.ascontiguousarray(label)), mask.as_subclass(torch.Tensor))
    no_flip = RandomHorizontalFlipSwap(ATR.flip_lut, p=0.0)
    assert torch.equal(no_flip(*to_tv(image, label))[1], mask)


def test_flip_keeps_red_pixels_labelled_as_they_were_swapped():
    image, label = person_halves()
    img, mask = RandomHorizontalFlipSwap(ATR.flip_lut, p=1.0)(*to_tv(image, label))
    red = img[0] == 255
    # originally red pixels were labelled 15 (right-arm); after a flip they become 14
    assert mask[red].unique().tolist() == [14]


@pytest.mark.parametrize("independent", [False, True])
def test_random_scale_range(independent):
    torch.manual_seed(0)
    t = RandomScale((0.5, 2.0), independent_axes=independent)
    image, label = person_halves(40, 40)
    ratios = []
    for _ in range(50):
        img, mask = t(*to_tv(image, label))
        assert img.shape[-2:] == mask.shape[-2:]
        h, w = mask.shape
        assert 20 <= h <= 80 and 20 <= w <= 80
        ratios.append(h / w)
        assert set(mask.unique().tolist()) <= {14, 15}  # nearest for masks: no blended ids
    assert (max(ratios) - min(ratios) > 0.1) == independent


def test_training_transform_output_and_padding():
    torch.manual_seed(1)
    image, label = person_halves(30, 50)
    t = training_transform(ATR, 32)
    seen_pad = False
    for _ in range(30):
        img, lab = apply_joint(t, image, label)
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
        assert lab.shape == (32, 32) and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {14, 15, 255}
        seen_pad |= bool((lab == 255).any())
    assert seen_pad  # scales below 1 leave padding, labelled ignore
    img, lab = apply_joint(training_transform(ATR, 32, pad_label=0, scale_range=(0.5, 0.5)), image, label)
    assert (lab == 0).any() and not (lab == 255).any()


def test_no_transform_keeps_native_resolution():
    image, label = person_halves(37, 53)
    img, lab = apply_joint(None, image, label)
    assert img.shape == (3, 37, 53) and np.array_equal(lab, label)
