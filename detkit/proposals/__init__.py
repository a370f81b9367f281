"""Region proposals: selective search (offline, CPU) and proposal caches."""

from detkit.proposals.cache import (
    ProposalCache,
    compute_proposals,
    selective_search_params,
)
from detkit.proposals.selective_search import selective_search

__all__ = ["ProposalCache", "compute_proposals", "selective_search", "selective_search_params"]
