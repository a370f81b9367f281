"""RoI heads: poolers, box, mask and keypoint heads, sampling, losses and post-processing."""

from detkit.heads.box_head import BoxPredictor, TwoFCHead
from detkit.heads.cascade_roi_heads import CascadeRoIHeads
from detkit.heads.keypoint_head import KeypointHead, heatmaps_to_keypoints, keypoint_loss, keypoint_targets
from detkit.heads.mask_head import MaskHead, mask_targets, paste_masks
from detkit.heads.poolers import RoIPooler, assign_fpn_levels
from detkit.heads.roi_heads import RoIHeads

__all__ = [
    "BoxPredictor",
    "TwoFCHead",
    "KeypointHead",
    "heatmaps_to_keypoints",
    "keypoint_loss",
    "keypoint_targets",
    "MaskHead",
    "mask_targets",
    "paste_masks",
    "RoIPooler",
    "assign_fpn_levels",
    "RoIHeads",
    "CascadeRoIHeads",
]
