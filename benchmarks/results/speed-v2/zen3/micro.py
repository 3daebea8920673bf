"""A quick timing loop for A/B checks of the C loop: one LearnedOptimizer (the default weights, impl
"auto") over four 1-D tensors and one [1000, 4] tensor, N parameters in all, 80 steps on fixed
gradients, 1 thread. Prints the 20th-percentile and fastest step time after 5 warm-up steps and
the parameters' sum after the steps, which two builds that keep every result bit print alike.

    python micro.py 1e6                       # the package as installed
    PYTHONPATH=/path/to/other/checkout python micro.py 1e6
"""

import sys
import time

import torch

from learned_optim import LearnedOptimizer

torch.set_num_threads(1)
n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 10**6
torch.manual_seed(0)
ps = [torch.nn.Parameter(torch.randn(n // 4 - 1000) * 0.1) for _ in range(4)]
ps.append(torch.nn.Parameter(torch.randn(1000, 4)))
opt = LearnedOptimizer(ps)
for p in ps:
    p.grad = torch.randn_like(p) * 1e-2
ts = []
for _ in range(80):
    t = time.perf_counter()
    opt.step()
    ts.append(time.perf_counter() - t)
s = sum(float(p.detach().double().sum()) for p in ps)
print(f"{n:.0e} p20 {1e3 * sorted(ts[5:])[15]:.2f} ms  min {1e3 * min(ts[5:]):.2f}  checksum {s!r}")
