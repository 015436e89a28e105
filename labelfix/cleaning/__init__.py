"""Label-wise management and cleaning (BalanceMix GMMs, label states, issue scores).

One implementation serves BalanceMix training (p_G, states, weights) and
``labelfix clean`` (scores, corrections). See docs/cleaning.md.
"""

from labelfix.cleaning.api import CELL_ARRAYS, CORRECTION_COLUMNS, LabelIssues, find_label_issues, write_cell_arrays
from labelfix.cleaning.gmm import (GMMFit, clean_posterior, fit_gmm_chunks, fit_gmm_groups, fit_label_gmms,
                                   posterior_values)
from labelfix.cleaning.noise_rates import confident_joint, error_posterior, estimate_noise_rates
from labelfix.cleaning.scores import bce_losses, get_scorer, list_scorers, register_scorer
from labelfix.cleaning.states import (AMBIGUOUS, CLEAN, ESTIMATED, RELABELED, STATE_NAMES, assign_states,
                                      default_delta, is_single_positive)

__all__ = [
    "AMBIGUOUS", "CELL_ARRAYS", "CLEAN", "CORRECTION_COLUMNS", "ESTIMATED", "GMMFit", "LabelIssues", "RELABELED",
    "STATE_NAMES", "assign_states", "bce_losses", "clean_posterior", "confident_joint", "default_delta",
    "error_posterior", "estimate_noise_rates", "find_label_issues",
    "fit_gmm_chunks", "fit_gmm_groups", "fit_label_gmms", "get_scorer", "is_single_positive", "list_scorers",
    "posterior_values", "register_scorer", "write_cell_arrays",
]
