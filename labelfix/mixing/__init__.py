"""Batch mixing functions: pure tensor functions driven by an explicit torch.Generator.

- ``mixup``: Mixup with tri-state labels (known only where both members are known).
- ``logicmix`` / ``logic_or``: LogicMix (equal-weight mean, logical OR with unknowns).
- ``minority_sampling_weights`` / ``balancemix_lambda`` / ``mix_pair``: BalanceMix.
"""

from labelfix.mixing.balancemix import MinorityWeights, balancemix_lambda, minority_sampling_weights, mix_pair
from labelfix.mixing.logicmix import logic_or, logicmix
from labelfix.mixing.mixup import mixup, sample_beta

__all__ = ["MinorityWeights", "balancemix_lambda", "logic_or", "logicmix", "minority_sampling_weights",
           "mix_pair", "mixup", "sample_beta"]
