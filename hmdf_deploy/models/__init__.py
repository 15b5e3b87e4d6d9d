"""HM-DF network architectures (SPEC §11) and their config."""

from __future__ import annotations

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models.base import SpikingNet
from hmdf_deploy.models.config import VGG11, ModelConfig, parse_vgg_cfg
from hmdf_deploy.models.resnet import LAYOUTS, ResNet
from hmdf_deploy.models.vgg import VGG

MODEL_NAMES = ("vgg11", *LAYOUTS)


def build_model(config: ModelConfig) -> SpikingNet:
    config.validate()
    return VGG(config) if config.arch == "vgg" else ResNet(config)


def arch_from_name(name: str) -> tuple[str, list]:
    """`--model` value → (arch, vgg cfg). Accepts vgg11, resnet18/19/34 or a cfg like '64,M,128'."""
    key = name.strip().lower()
    if key == "vgg11":
        return "vgg", list(VGG11)
    if key in LAYOUTS:
        return key, []
    if key and (key[0].isdigit() or key[0] in "mg"):
        return "vgg", parse_vgg_cfg(name)
    raise HmdfError(f"unknown model {name!r}; use {', '.join(MODEL_NAMES)} or a VGG cfg such as 64,128,M,256,M")


__all__ = ["ModelConfig", "SpikingNet", "build_model", "arch_from_name", "MODEL_NAMES"]
