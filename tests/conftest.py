import pytest
import torch

from learned_optim import CoordinatewiseLSTM


@pytest.fixture
def random_net() -> CoordinatewiseLSTM:
    """A network whose output head is non-zero, so the LSTM really changes the step (not Adam)."""
    net = CoordinatewiseLSTM(seed=1)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        net.head_weight.copy_(torch.randn(net.head_weight.shape, generator=gen) * 0.5)
        net.head_bias.copy_(torch.randn(net.head_bias.shape, generator=gen) * 0.2)
    return net
