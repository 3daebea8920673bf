"""Config validation (``learned_optim.common.config``) as the meta-training configs use it."""

import pytest

from learned_optim.common.config import ConfigTypeError
from learned_optim.meta import MetaTrainConfig
from learned_optim.network import LSTMOptimizerConfig


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(meta_steps=0), ValueError, "MetaTrainConfig.meta_steps must be a positive int, got 0; pass an int >= 1"),
        (dict(meta_steps="10"), ConfigTypeError, "MetaTrainConfig.meta_steps must be a positive int, got '10'"),
        (dict(seed=-1), ValueError, "MetaTrainConfig.seed must be an int >= 0, got -1"),
        (dict(meta_lr=float("nan")), ValueError, "MetaTrainConfig.meta_lr must be a finite number > 0, got nan"),
        (dict(loss_cap=1), ValueError, "MetaTrainConfig.loss_cap must be a finite number > 1, got 1"),
        (dict(slot_rng="yes"), ConfigTypeError, "MetaTrainConfig.slot_rng must be true or false, got 'yes'"),
        (dict(second_order=1), ConfigTypeError, "MetaTrainConfig.second_order must be true or false"),
        (dict(train_tasks="big"), ValueError,
         "MetaTrainConfig.train_tasks must be one of ['arch', 'default', 'tiny', 'v2', 'v2-wide', 'v2-wide-split', "
         "'v2-wide-split-nanovit', 'v2-wide-split-vitnano3', 'vit-nanogpt-split', 'wide'], got 'big'"),
        (dict(objective_split="test"), ValueError,
         "MetaTrainConfig.objective_split must be one of ['heldout', 'train'], got 'test'"),
        (dict(val_reduce="median"), ValueError, "MetaTrainConfig.val_reduce must be one of ['max', 'mean']"),
        (dict(objective_from=1), ValueError, "MetaTrainConfig.objective_from must be"),
        (dict(network=[]), ConfigTypeError, "MetaTrainConfig.network must be a dict of LSTMOptimizerConfig fields"),
    ],
)
def test_meta_train_config_errors_name_field_value_and_fix(kwargs, exc, text):
    with pytest.raises(exc) as info:
        MetaTrainConfig(**kwargs)
    assert text in str(info.value)


def test_type_errors_are_also_value_errors():
    # configs come from JSON: callers that catch ValueError (the CLI, the weights loader) see them too
    with pytest.raises(ValueError):
        MetaTrainConfig(num_threads=1.5)
    with pytest.raises(TypeError):
        LSTMOptimizerConfig(beta1="0.9")


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(hidden_size=0), "LSTMOptimizerConfig.hidden_size must be a positive int, got 0"),
        (dict(beta2=1.0), "LSTMOptimizerConfig.beta2 must be a finite number in [0.0, 1.0), got 1.0"),
        (dict(eps=0.0), "LSTMOptimizerConfig.eps must be a finite number > 0.0, got 0.0"),
        (dict(features=("g_norm", "g_norm")), "LSTMOptimizerConfig.features must be distinct names"),
    ],
)
def test_network_config_errors(kwargs, text):
    with pytest.raises(ValueError) as info:
        LSTMOptimizerConfig(**kwargs)
    assert text in str(info.value)


def test_unknown_fields_are_listed():
    with pytest.raises(ValueError, match=r"unknown meta-training config field\(s\) \['meta_stepz'\]; known fields"):
        MetaTrainConfig.from_dict({"meta_stepz": 3})
    with pytest.raises(TypeError, match="must be a JSON object"):
        MetaTrainConfig.from_dict([1])


def test_network_overrides_keep_the_presets_other_network_fields(tmp_path):
    from learned_optim.meta.cli import _parse_overrides
    from learned_optim.meta.config import get_preset, load_config

    v2 = get_preset("lstm-h4-v2")
    changed = v2.replace(network={"direction_bound": 0.0})
    assert changed.network == {**v2.network, "direction_bound": 0.0}
    assert changed.network["sign_equivariant"] is True and changed.network["context_features"]
    # the command line: a dotted key sets one network field, several combine
    overrides = _parse_overrides(["network.direction_bound=0", "network.hidden_size=8", "meta_steps=5"])
    assert overrides == {"network": {"direction_bound": 0, "hidden_size": 8}, "meta_steps": 5}
    cli = v2.replace(**overrides)
    assert cli.network == {**v2.network, "direction_bound": 0, "hidden_size": 8} and cli.meta_steps == 5
    # a preset-based JSON file does the same
    path = tmp_path / "c.json"
    path.write_text('{"preset": "lstm-h4-v2", "network": {"direction_bound": 0.0}}')
    assert load_config(path).network == changed.network
    # a bad network field is still refused, naming it
    with pytest.raises(ValueError, match="direction_bound"):
        v2.replace(network={"direction_bound": -1.0})
    # and so is a name that is not a field (a typo must not be dropped silently)
    with pytest.raises(ValueError, match=r"MetaTrainConfig.network is not a valid LSTMOptimizerConfig.*'hiden_size'"):
        v2.replace(**_parse_overrides(["network.hiden_size=8"]))
