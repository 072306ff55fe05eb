"""Training pieces protect: aligned binary pairs, the original loss, IoU."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from cutout.data.dataset import PairDataset
from cutout.data.synth import synthesize_dataset
from cutout.data.transforms import eval_transform, train_transform
from cutout.model.inference import IMAGENET_MEAN, IMAGENET_STD
from cutout.train.engine import criterion, iou_per_image


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthesize_dataset(str(root / "train"), 8, size=(96, 96), seed=0)
    synthesize_dataset(str(root / "val"), 4, size=(96, 96), seed=1)
    return root


def test_dataset_gives_normalised_photos_and_binary_masks(tiny_dataset):
    dataset = PairDataset(str(tiny_dataset / "train"), train_transform(64, crop=56))
    image, mask = dataset[0]
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32
    assert mask.shape == (1, 56, 56)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # the original normalisation: divide by the max, then ImageNet mean/std
    low = (0 - IMAGENET_MEAN) / IMAGENET_STD
    high = (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert all(low[c] - 1e-4 <= image[c].min() and image[c].max() <= high[c] + 1e-4 for c in range(3))


@pytest.mark.parametrize("seed", range(5))
def test_random_crop_and_flip_move_photo_and_mask_together(seed):
    mask = np.zeros((80, 80), dtype=np.uint8)
    mask[10:50, 20:70] = 1
    mask[50:75, 5:15] = 1
    photo = tv_tensors.Image(torch.from_numpy(np.stack([mask * 255] * 3)))  # the photo IS the mask, in colour
    torch.manual_seed(seed)
    image, moved = train_transform(64, crop=48)(photo, tv_tensors.Mask(torch.from_numpy(mask)[None]))
    bright = image[0] > 0  # normalised white pixels are positive, black ones negative
    assert (bright == (moved[0] > 0.5)).float().mean() > 0.97  # only resampled edge pixels may differ


def test_eval_transform_is_deterministic(tiny_dataset):
    dataset = PairDataset(str(tiny_dataset / "val"), eval_transform(64))
    first, second = dataset[1], dataset[1]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_criterion_sums_bce_over_the_seven_outputs():
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    outputs = tuple(torch.randn(2, 1, 8, 8) for _ in range(7))
    expected = sum(F.binary_cross_entropy_with_logits(o, target).item() for o in outputs)
    assert criterion(outputs, target).item() == pytest.approx(expected, rel=1e-6)


def test_iou_per_image():
    truth = torch.zeros(4, 1, 4, 4)
    truth[:, :, :2] = 1  # top half
    logits = torch.full((4, 1, 4, 4), -10.0)
    logits[0, :, :2] = 10  # exact
    logits[1, :, 2:] = 10  # disjoint
    logits[2, :, :1] = 10  # half of it
    empty_truth = truth.clone()
    empty_truth[3] = 0  # nothing predicted, nothing there
    assert iou_per_image(logits, empty_truth).tolist() == [1.0, 0.0, 0.5, 1.0]


def test_dataset_refuses_an_empty_split(tiny_dataset):
    with pytest.raises(ValueError, match="no pairs in split 'train'"):
        PairDataset(str(tiny_dataset / "val"), eval_transform(64), split="train")
