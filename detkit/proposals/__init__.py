"""Region proposals: the RPN (`RPN`, `RPNHead`), selective search (offline, CPU) and proposal caches.

Selective search and the caches need OpenCV (`pip install 'detkit-rcnn[proposals]'`): the cache
names are imported on first use and `selective_search` imports cv2 when called, so
`detkit.proposals.rpn` (used by every detector) works without it.
"""

import importlib

from detkit.proposals.selective_search import selective_search

# imported on first use: the caches need cv2, the RPN torch (`detkit proposals` and its
# selective-search workers run without importing torch)
_LAZY = {
    "ProposalCache": "cache",
    "compute_proposals": "cache",
    "selective_search_params": "cache",
    "RPN": "rpn",
    "RPNHead": "rpn",
}

__all__ = ["RPN", "ProposalCache", "RPNHead", "compute_proposals", "selective_search", "selective_search_params"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"detkit.proposals.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'detkit.proposals' has no attribute {name!r}")
