"""``FewShotConfig``: the settings of a few-shot meta-training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ...common.config import ConfigTypeError, check_bool, check_int, check_number, config_error, from_dict
from ...network import LSTMOptimizerConfig

__all__ = ["FewShotConfig"]


@dataclass
class FewShotConfig:
    """A few-shot meta-training run (saved in the provenance of the weights it produces).

    Attributes:
        seed: seeds every generator. Default 0.
        n_way: classes per episode. Default 5.
        k_shots: support examples per class; meta-training draws one per episode. Default (1, 5).
        q_query: query examples per class. Default 15 (the standard in the few-shot literature).
        inner_steps: T, inner updates per episode, the same for every method. Default 10.
        hidden: hidden units of the adapted MLP (in -> hidden -> n_way, ReLU). Default 32.
        meta_steps: meta-optimizer steps. Default 1500.
        meta_batch: episodes per meta-step. Default 8.
        meta_lr: Adam lr for the LSTM weights and the log step scale. Default 3e-3.
        grad_clip: meta-gradient norm clip. Default 1.0.
        network: LSTMOptimizerConfig fields for a fresh network (ignored with ``start_from``).
        start_from: weights to start from (shipped name, directory or Hub id). Default
            "adam-equivalent": the untrained rule is Adam, so training starts from a baseline.
        tune_episodes: meta-training episodes used to pick each method's lr on the grid. Default 100.
        learn_init: also meta-learn the MLP's initialisation (MAML-style), saved next to the
            weights as ``few_shot_init.safetensors``; every episode then starts from it instead
            of a fresh default init. The benchmark's ``init="learned"`` gives each baseline its
            own init meta-learned the same way for its inner loop. Default False.
    """

    seed: int = 0
    n_way: int = 5
    k_shots: tuple[int, ...] = (1, 5)
    q_query: int = 15
    inner_steps: int = 10
    hidden: int = 32
    meta_steps: int = 1500
    meta_batch: int = 8
    meta_lr: float = 3e-3
    grad_clip: float = 1.0
    network: dict = dataclasses.field(default_factory=dict)
    start_from: str | None = "adam-equivalent"
    tune_episodes: int = 100
    learn_init: bool = False

    def __post_init__(self) -> None:
        check_int(self, "seed", minimum=0)
        check_int(self, "n_way", minimum=2)
        if not isinstance(self.k_shots, (list, tuple)):
            config_error(self, "k_shots", "a list of positive ints", "pass e.g. [1, 5]", exc=ConfigTypeError)
        self.k_shots = tuple(self.k_shots)
        if not self.k_shots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.k_shots):
            config_error(self, "k_shots", "a non-empty list of positive ints", "pass e.g. [1, 5]")
        for name in ("q_query", "inner_steps", "hidden", "meta_batch", "tune_episodes"):
            check_int(self, name, minimum=1)
        check_int(self, "meta_steps", minimum=0)
        check_number(self, "meta_lr", gt=0)
        check_number(self, "grad_clip", gt=0)
        if not isinstance(self.network, dict):
            config_error(self, "network", "a dict of LSTMOptimizerConfig fields", "pass e.g. {\"hidden_size\": 4}",
                         exc=ConfigTypeError)
        try:
            LSTMOptimizerConfig(**self.network)
        except (TypeError, ValueError) as e:
            raise ValueError(f"FewShotConfig.network is not a valid LSTMOptimizerConfig: {e}") from None
        if self.start_from is not None and not isinstance(self.start_from, str):
            config_error(self, "start_from", "a weights name, directory or Hub id, or null", exc=ConfigTypeError)
        check_bool(self, "learn_init")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["k_shots"] = list(self.k_shots)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FewShotConfig":
        """The config with the fields in ``d`` (parsed JSON; unknown fields are refused)."""
        if isinstance(d, dict) and "init" in d:
            # Written by the first release of this module: every episode used a random init, which
            # is learn_init=False.
            if d["init"] != "random":
                raise ValueError(f"init={d['init']!r} is not supported; use learn_init=true for a learned init")
            d = {k: v for k, v in d.items() if k != "init"}
        return from_dict(cls, d)
