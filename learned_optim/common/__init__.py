"""Small helpers shared by the optimizer, meta-training, the benchmarks and the demo.

One concern a module, no dependency on the rest of the package:

* ``files``: atomic writes (temp file, fsync, rename, fsync of the folder) and strict JSON.
* ``data``: scikit-learn's bundled digits as tensors, and feature standardisation.
* ``adam_baseline``: the Adam learning-rate grid and the divergence rule the baselines use.
* ``schedules``: the scheduled training recipe (warm-up + cosine lr, decoupled weight decay).
* ``machine``: what a measurement ran on (recorded in results files) and its one-line summary.
"""
