"""ModelConfig: everything needed to rebuild a network, stored as `config.json` in a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.neurons import SPIKE_MODES
from hmdf_deploy.quant import WEIGHT_MODES

ARCHS = ("vgg", "resnet18", "resnet19", "resnet34")
NEURONS = ("hmdf", "lif")
POOLS = ("avg", "max")
STEMS = ("cifar", "imagenet")
#: Upper bounds, so that a mistyped huge value is one line naming the option instead of an overflow
#: deep in torch. T: the paper uses 4-10 steps; every step is a forward pass of the whole network,
#: and 1024 steps already make a single digits epoch take hours. Channels: the widest layer of the
#: paper's networks has 512; 8192 is 16× that (one 3×3 conv of 8192 → 8192 holds 604 M weights,
#: 2.4 GB in fp32). The ResNet base width is bounded so that its widest stage (8× the base) stays
#: within MAX_CHANNELS.
MAX_T = 1024
MAX_CHANNELS = 8192
MAX_WIDTH = MAX_CHANNELS // 8
#: The paper's VGG-SNN for 2×48×48 events (SPEC §11); "M" is the pool, "G" a global average pool.
VGG11 = (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@dataclass
class ModelConfig:
    """One HM-DF network. `validate()` turns impossible combinations into one-line HmdfErrors."""

    arch: str = "vgg"
    cfg: list = field(default_factory=lambda: list(VGG11))  # VGG only: ints, "M", "G"
    in_channels: int = 3
    input_size: tuple[int, int] = (32, 32)
    num_classes: int = 10
    T: int = 4
    neuron: str = "hmdf"
    weights: str = "fp32"
    spikes: str = "float"
    parallel: bool = False
    mem_bn: bool = False
    seca: int = 0
    pool: str = "avg"  # VGG pooling
    width: int = 64  # ResNet base width
    stem: str = "cifar"  # ResNet stem
    quantize_stem: bool = False  # SPEC §5: the first conv is quantized for event input

    def validate(self) -> "ModelConfig":
        choices = {"arch": ARCHS, "neuron": NEURONS, "weights": WEIGHT_MODES,
                   "spikes": SPIKE_MODES, "pool": POOLS, "stem": STEMS, "seca": (0, 1, 2)}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise HmdfError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, allowed))}")
        if self.T < 1:
            raise HmdfError(f"--T must be at least 1, got {self.T}")
        if self.T > MAX_T:
            raise HmdfError(f"--T must be at most {MAX_T}, got {self.T}")
        if self.neuron == "lif" and (self.spikes != "float" or self.parallel or self.mem_bn):
            raise HmdfError("the LIF baseline has binary spikes: it takes no --spikes 4bit, --parallel or --mem-bn")
        if self.parallel and not self.arch.startswith("resnet"):
            raise HmdfError("--parallel applies to the second neuron of ResNet blocks; VGG has none")
        if self.arch == "vgg":
            check_vgg_cfg(self.cfg, self.input_size)
        if self.width < 1 or self.in_channels < 1 or self.num_classes < 2:
            raise HmdfError("width and in_channels must be positive and num_classes at least 2")
        if self.width > MAX_WIDTH:
            raise HmdfError(f"--width must be at most {MAX_WIDTH} (the widest ResNet stage is 8× as wide, "
                            f"at most {MAX_CHANNELS} channels), got {self.width}")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HmdfError(f"model config has unknown keys: {', '.join(unknown)}")
        d = dict(d)
        if "input_size" in d:
            d["input_size"] = tuple(d["input_size"])
        return cls(**d).validate()


def parse_vgg_cfg(text: str) -> list:
    """"64,128,M,256" → [64, 128, "M", 256]; raises HmdfError naming the bad entry."""
    cfg: list = []
    for item in (s.strip() for s in text.split(",")):
        if item.upper() in ("M", "G"):
            cfg.append(item.upper())
        elif item.isdigit() and int(item) > 0:
            cfg.append(int(item))
        else:
            raise HmdfError(f"bad model cfg entry {item!r} in {text!r}: use channel counts, M (pool) or G (global pool)")
    return cfg


def check_vgg_cfg(cfg: list, input_size: tuple[int, int]) -> None:
    if not any(isinstance(c, int) for c in cfg):
        raise HmdfError(f"model cfg {cfg} has no conv layer")
    h, w = input_size
    for c in cfg:
        if c == "M":
            if h < 2 or w < 2:
                raise HmdfError(f"model cfg pools a {h}×{w} map: too many M entries for input {input_size[0]}×{input_size[1]}")
            h, w = h // 2, w // 2
        elif c == "G":
            h, w = 1, 1
        elif not isinstance(c, int):
            raise HmdfError(f"bad model cfg entry {c!r}")
        elif isinstance(c, bool) or not 1 <= c <= MAX_CHANNELS:
            raise HmdfError(f"bad model cfg entry {c!r}: a layer of --model has 1 to {MAX_CHANNELS} channels")
