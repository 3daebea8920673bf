r"""Few-shot learning: a learned inner-loop optimizer for N-way K-shot episodes.

An *episode* samples N classes, K labelled support examples and Q query examples per class. A
small MLP, freshly initialised, is adapted for T steps on the support set by an inner optimizer;
the query loss after adaptation is the meta-objective. Three inner optimizers share one code path
(``adapt``) and one initialisation policy:

* ``"learned"``: the coordinatewise-LSTM rule (``learned_optim.meta.inner``) at a step scale
  ``lr`` that is meta-learned jointly with the LSTM (stored in the weights' provenance);
* ``"sgd"``: plain gradient descent, MAML's inner optimizer, lr tuned on meta-training episodes;
* ``"adam"``: Adam (the same rule with a zero output head), lr tuned likewise.

Meta-gradients: **full** backpropagation through all T inner updates, second order (the inner
gradients are differentiated too, ``create_graph=True``). T is small (10) and the model tiny, so
nothing is truncated or approximated; ``tests/test_few_shot.py`` checks the meta-gradient against
finite differences in float64. (The tutorial failure mode this avoids: detaching the parameters
after each inner update, which makes the meta-gradient of the optimizer's weights zero.)

Classes and the held-out split: scikit-learn's digits (no download) have 10 digits; each digit
rotated by 0/90/180/270 degrees is its own class (the Omniglot rotation trick, Santoro et al.
2016), giving 40 classes. Digits 0-4 (20 classes) are for meta-training and lr tuning; digits 5-9
(20 classes) are held out and used only for evaluation. Any ``(X, y)`` can be passed instead.

Initialisation policy: by default every episode starts every method from the same fresh
PyTorch-default initialisation (``init_params``); with ``FewShotConfig.learn_init`` the
initialisation is meta-learned too (MAML-style) and saved next to the weights (``save_init``).

Entry points: ``learned-optim meta-train --config few-shot --out DIR`` trains
(``train_few_shot``); ``learned-optim benchmark few-shot`` evaluates
(``learned_optim.benchmarking.few_shot``).

Modules: ``config`` (``FewShotConfig``), ``family`` (the digit classes, the episode sampler, the
functional MLP), ``adapt`` (the inner loop, lr tuning), ``train`` (meta-training of the rule and
of an initialisation, the init file).
"""

from .adapt import FEW_SHOT_LR_GRID, adapt, tune_lr
from .config import FewShotConfig
from .family import EpisodeSampler, digits_classes, init_params, mlp_logits, mlp_size, query_loss
from .train import INIT_FILE, load_init, mean_last, meta_train_inner, save_init, train_few_shot

__all__ = [
    "FewShotConfig",
    "EpisodeSampler",
    "digits_classes",
    "init_params",
    "mlp_logits",
    "mlp_size",
    "query_loss",
    "adapt",
    "tune_lr",
    "FEW_SHOT_LR_GRID",
    "meta_train_inner",
    "train_few_shot",
    "save_init",
    "load_init",
    "mean_last",
    "INIT_FILE",
]
