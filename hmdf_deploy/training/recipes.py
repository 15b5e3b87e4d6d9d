"""Per-dataset defaults, so that `hmdf train --dataset NAME` alone gives a good model.

Built-in data gets small networks that train in minutes on two CPU cores, without Mixup / CutMix
(the goals below were reached without them); the real datasets get the paper's recipe (SPEC §4.5,
§11, §12), Mixup / CutMix included. Every value can be overridden on the command line.
The built-in epochs are the shortest that reached the accuracy goals in benchmarks/RESULTS.md §3
(digits: 99.4-100 % over three seeds at 5 epochs; neuro-digits: 96.7-99.2 % at 8).
"""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "digits": dict(model="32,64,M,128,M", T=4, epochs=5, batch_size=64, lr=0.05, width=16, mix=False),
    "neuro-digits": dict(model="16,M,32,M,64,M", T=8, epochs=8, batch_size=64, lr=0.05, width=16, mix=False),
    "cifar10": dict(model="resnet18", T=4, epochs=300, batch_size=64, lr=0.01, width=64, mix=True),
    "cifar100": dict(model="resnet18", T=4, epochs=300, batch_size=64, lr=0.01, width=64, mix=True),
    "dvs-cifar10": dict(model="vgg11", T=10, epochs=300, batch_size=64, lr=0.01, width=64, mix=True),
}
