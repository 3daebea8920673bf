"""Only what pyproject.toml cannot say: the package list with the weights folder mapped in.

The shipped weights live at the top level in ./pretrained (Hub layout, one folder per name) and
are installed as package data of ``learned_optim.pretrained``, so a wheel works offline.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["learned_optim", "learned_optim.*"]) + ["learned_optim.pretrained"],
    package_dir={"learned_optim.pretrained": "pretrained"},
)
