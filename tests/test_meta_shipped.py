"""The shipped meta-trained weights: provenance matches the documented command, and they train."""

import math

import torch

from learned_optim import LearnedOptimizer, from_pretrained, list_shipped
from learned_optim.hub import resolve
from learned_optim.meta import MetaTrainConfig, get_preset

NAME = "lstm-h4-v1"


def test_shipped_weights_come_from_the_default_preset():
    assert NAME in list_shipped()
    net = from_pretrained(NAME)
    prov = net.provenance
    assert prov["trained"] is True
    # `learned-optim meta-train --config default` reproduces them: same config, same network.
    # (Fields added to MetaTrainConfig later take their defaults, which keep the old behaviour.)
    preset = get_preset("default")
    assert MetaTrainConfig.from_dict(prov["meta_train_config"]) == preset
    assert net.config.to_dict() == preset.network
    card = (resolve(NAME) / "README.md").read_text(encoding="utf-8")
    assert "learned-optim meta-train --config default" in card


def test_shipped_weights_train_a_small_model():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, :3].sum(1) > x[:, 3:].sum(1)).long()
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = LearnedOptimizer(model.parameters(), weights=NAME)
    with torch.no_grad():
        start = float(torch.nn.functional.cross_entropy(model(x), y))
    for step in range(150):
        idx = torch.randint(256, (32,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = float(torch.nn.functional.cross_entropy(model(x), y))
    assert math.isfinite(end) and end < 0.5 * start
