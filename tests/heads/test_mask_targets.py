"""mask_targets: each RoI's matched gt mask cropped and resized, on hand-checked cases."""

import torch

from detkit.heads.mask_head import mask_targets


def test_mask_targets_pick_image_and_matched_mask():
    left_right = torch.zeros(2, 8, 8, dtype=torch.uint8)  # image 0: mask 0 = columns 0-3, mask 1 = columns 4-7
    left_right[0, :, :4] = 1
    left_right[1, :, 4:] = 1
    top = torch.zeros(1, 6, 6, dtype=torch.uint8)  # image 1: rows 0-2
    top[0, :3] = 1
    boxes = torch.tensor(
        [
            [0.5, 0.5, 4.5, 1.5],  # image 1, in the top rows
            [0.5, 0.5, 2.5, 7.5],  # image 0, left half, mask 0
            [0.5, 0.5, 2.5, 7.5],  # the same box against mask 1
            [4.5, 0.5, 6.5, 7.5],  # right half, mask 1
            [0.5, 4.0, 4.5, 5.0],  # image 1, below the mask
        ]
    )
    batch_idx = torch.tensor([1, 0, 0, 0, 1])  # not grouped by image
    matched = torch.tensor([0, 0, 1, 1, 0])
    out = mask_targets([left_right, top], boxes, batch_idx, matched, 4)
    assert out.shape == (5, 4, 4) and out.dtype == torch.float32
    expected = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])[:, None, None].expand(5, 4, 4)
    torch.testing.assert_close(out, expected)


def test_mask_targets_average_the_samples_of_each_bin():
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, :, :4] = 1
    # box x 2..6 in 2 bins of 2 px: samples at x = 2.5, 3.5 (1 and 0.5) and 4.5, 5.5 (0 and 0)
    out = mask_targets([mask], torch.tensor([[2.0, 0.0, 6.0, 8.0]]), torch.tensor([0]), torch.tensor([0]), 2)
    torch.testing.assert_close(out, torch.tensor([[[0.75, 0.0], [0.75, 0.0]]]))


def test_mask_targets_of_images_without_rois():
    masks = [torch.ones(1, 4, 4, dtype=torch.uint8), torch.ones(0, 5, 5, dtype=torch.uint8)]
    none = torch.zeros(0, dtype=torch.int64)
    out = mask_targets(masks, torch.zeros(0, 4), none, none, 3)
    assert out.shape == (0, 3, 3)
