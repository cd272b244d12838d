"""Shared test settings for advssm-ssm-layers."""
import torch

# The test tensors are small: intra-op threads only add synchronisation, and under pytest-xdist
# on a shared 2-core machine they turn millisecond ops into much slower ones.
torch.set_num_threads(1)
