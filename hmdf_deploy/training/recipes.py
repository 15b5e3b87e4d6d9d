"""Per-dataset defaults, so that `hmdf train --dataset NAME` alone gives a good model.

Built-in data gets small networks that train in minutes on two CPU cores, without Mixup / CutMix
(the goals below were reached without them); the real datasets get the paper's recipe (SPEC §4.5,
§11, §12), Mixup / CutMix included. Every value can be overridden on the command line.
The built-in epochs are the shortest that reached the accuracy goals in benchmarks/RESULTS.md §3
(digits: 99.4-100 % over three seeds at 5 epochs; neuro-digits: 96.7-99.2 % at 8).
"""

from __future__ import annotations

from dataclasses import fields

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig, arch_from_name
from hmdf_deploy.training.trainer import TrainConfig

RECIPES: dict[str, dict] = {
    "digits": dict(model="32,64,M,128,M", T=4, epochs=5, batch_size=64, lr=0.05, width=16, mix=False),
    "neuro-digits": dict(model="16,M,32,M,64,M", T=8, epochs=8, batch_size=64, lr=0.05, width=16, mix=False),
    "cifar10": dict(model="resnet18", T=4, epochs=300, batch_size=64, lr=0.01, width=64, mix=True),
    "cifar100": dict(model="resnet18", T=4, epochs=300, batch_size=64, lr=0.01, width=64, mix=True),
    "dvs-cifar10": dict(model="vgg11", T=10, epochs=300, batch_size=64, lr=0.01, width=64, mix=True),
}


def recipe(dataset: str, **options) -> tuple[ModelConfig, TrainConfig]:
    """The (ModelConfig, TrainConfig) that `hmdf train --dataset DATASET` trains with: the dataset's
    defaults above, and `options` in their place. `options` are fields of either config, with `model`
    (a --model string: vgg11, resnet18, a VGG cfg such as "32,M,64") for arch and cfg. Both validated;
    `start` sets in_channels, input_size and num_classes from the data."""
    if dataset not in RECIPES:
        raise HmdfError(f"unknown dataset {dataset!r}; choose one of {', '.join(RECIPES)}")
    options = {k: v for k, v in options.items() if v is not None}  # None: the dataset's default
    if "model" in options and {"arch", "cfg"} & options.keys():
        raise HmdfError("recipe() takes model (a --model string) or arch and cfg, not both")
    if options.get("data_dir") is not None:
        options["data_dir"] = str(options["data_dir"])  # stored in config.json
    values = {**RECIPES[dataset], **options, "dataset": dataset}
    model_fields, train_fields = {f.name for f in fields(ModelConfig)}, {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - model_fields - train_fields - {"model"})
    if unknown:
        raise HmdfError(f"recipe() got unknown options {', '.join(unknown)}")
    if {"arch", "cfg"} & options.keys():  # cfg alone is a VGG's
        values.setdefault("arch", "vgg")
    else:
        values["arch"], values["cfg"] = arch_from_name(values["model"])
    model_config = ModelConfig(**{k: v for k, v in values.items() if k in model_fields}).validate()
    return model_config, TrainConfig(**{k: v for k, v in values.items() if k in train_fields}).validate()
