"""Few-shot benchmark: the learned inner optimizer against tuned SGD (MAML's inner loop) and tuned Adam.

5-way 1-shot and 5-way 5-shot episodes from held-out classes of scikit-learn's digits (digits 5-9,
each rotation a class), T = 10 inner steps from a fresh initialisation, 600 episodes per setting,
query accuracy with 95% confidence intervals. Baseline lrs are tuned on meta-training classes only.

Run (writes few_shot.json / .md / .png into benchmarks/results/):
    python benchmarks/few_shot.py
    python benchmarks/few_shot.py --weights lstm-fewshot-digits --episodes 600 --out benchmarks/results
    python benchmarks/few_shot.py --quick --out /tmp/few_shot    # seconds: a 3-step trained net, 20 episodes

With a learned initialisation (MAML-style; weights trained with ``learn_init``, writes
few_shot_learned_init.json / .md / .png; each baseline gets an init meta-learned for its own
inner loop first, as many meta-steps as the learned optimizer had unless --baseline-meta-steps):
    python benchmarks/few_shot.py --weights lstm-fewshot-digits-init --init learned
    python benchmarks/few_shot.py --quick --init learned --out /tmp/few_shot
"""

import argparse
import sys
import tempfile

import torch

from learned_optim import from_pretrained, list_shipped
from learned_optim.hub import resolve
from learned_optim.meta.few_shot import FewShotConfig, run_benchmark, train_few_shot

DEFAULT = "lstm-fewshot-digits"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help=f"weights to evaluate (default: shipped {DEFAULT!r})")
    parser.add_argument("--episodes", type=int, default=600, help="held-out episodes per setting (default 600)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the pipeline (numbers meaningless)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--init", choices=("fresh", "learned"), default="fresh",
                        help="fresh default init per episode (default), or meta-learned inits (MAML-style)")
    parser.add_argument("--baseline-meta-steps", type=int, default=None,
                        help="--init learned: meta-steps for each baseline's init (default: the learned optimizer's)")
    args = parser.parse_args(argv)
    if args.baseline_meta_steps is not None and args.baseline_meta_steps < 0:
        parser.error(f"--baseline-meta-steps must be >= 0, got {args.baseline_meta_steps}")
    torch.set_num_threads(args.threads)
    if args.quick:
        cfg = FewShotConfig(meta_steps=3, meta_batch=2, tune_episodes=5, learn_init=args.init == "learned")
        with tempfile.TemporaryDirectory() as tmp:
            net, _ = train_few_shot(cfg, out=tmp, progress=False)
            run_benchmark(net, cfg, args.out, episodes=20, tune_episodes=5, weights_name="3-step quick run",
                          command="python benchmarks/few_shot.py --quick" + (" --init learned" if cfg.learn_init else ""),
                          init=args.init, init_dir=tmp, progress=False)
        return 0
    name = args.weights or DEFAULT
    if args.weights is None and DEFAULT not in list_shipped():
        sys.exit(f"shipped weights {DEFAULT!r} not found; pass --weights")
    net = from_pretrained(name)
    fields = dict(net.provenance.get("few_shot_config", {}))
    cfg = FewShotConfig.from_dict(fields)
    if args.init == "learned" and not cfg.learn_init:
        parser.error(f"--init learned: the weights {name!r} were trained without learn_init (no learned init)")
    payload = run_benchmark(net, cfg, args.out, episodes=args.episodes, weights_name=name,
                            command="python benchmarks/few_shot.py " + " ".join(sys.argv[1:]),
                            init=args.init, init_dir=resolve(name) if args.init == "learned" else None,
                            baseline_meta_steps=args.baseline_meta_steps)
    stem = "few_shot" if args.init == "fresh" else "few_shot_learned_init"
    print((__import__("pathlib").Path(args.out) / f"{stem}.md").read_text())
    return 0 if payload else 1


if __name__ == "__main__":
    raise SystemExit(main())
