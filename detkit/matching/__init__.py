"""Target assignment: anchors, IoU matcher, balanced sampler and box coder."""

from detkit.matching.anchors import AnchorGenerator, make_cell_anchors
from detkit.matching.box_coder import BoxCoder
from detkit.matching.matcher import Matcher
from detkit.matching.sampler import BalancedSampler

__all__ = ["AnchorGenerator", "BalancedSampler", "BoxCoder", "Matcher", "make_cell_anchors"]
