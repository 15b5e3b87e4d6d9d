"""Import checkpoints of the paper's reference code (GitHub hzc1208/HD_LIF) as hmdf run directories.

Everything this module relies on about those checkpoints is in docs/import-hdlif.md (from the
project's HDLIF-IMPORT notes): the container, the keys, the forward order and its quirks.

The import has three steps, each a function of its own:

1. `load_checkpoint`: `torch.load(weights_only=True)` (never unpickles code), the `model` entry of
   the reference's dict container or a bare state_dict, a `module.` prefix stripped.
2. `infer`: the ModelConfig from the keys (family, depth, T, classes, event input, stem, ternary,
   parallel, Mem-BN, SECA) and, for what the keys cannot show (spike mode, SECA-I vs II, 1-bit vs
   full precision, the dataset when the classes do not tell), from the reference's directory name
   (`<dataset>-<net_arch>-eca_<e>_mem-bn_<b>-parallel_<b>-T<T>-B<bs>-use_ter_<b>-<mode>`) or the
   user's options. Nothing is guessed silently: a missing fact is one error naming the option
   that supplies it, and an option that contradicts the keys (or the directory name) is an error.
3. `convert`: a strict key map from the reference layout to hmdf's modules (every key used, every
   missing or unexpected key named), quantizing the latent weights with the REFERENCE's rules:
   binary α_o·sign(W), α_o = mean|W[o]| per output channel, sign(0) = 0; ternary TWN with one α
   per layer (SPEC §5.2). The stored weights are the effective weights, on which hmdf's own
   quantizer (sign(0) = +1, `hmdf_deploy.quant`) is idempotent; this is checked layer by layer.
   A 1-bit channel whose latent weights mix exact zeros with non-zeros has no 1-bit hmdf form
   (the reference gives those weights 0): refused unless `allow_sign_zero`, which imports them
   as +α with a warning.

Quirk reproduced: a parallel neuron of the reference never advances its step counter, so it uses
θ = σ(v_th[0]) at every step; hmdf's ParallelHMDF has exactly one threshold logit, which gets
v_th[0] (v_th[1:] is unused by the reference and by the import).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from hmdf_deploy import __version__
from hmdf_deploy.atomic import make_dir
from hmdf_deploy.data import DataInfo
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig, build_model
from hmdf_deploy.models.config import VGG11
from hmdf_deploy.models.resnet import LAYOUTS, ResNet
from hmdf_deploy.models.vgg import VGG, ConvUnit
from hmdf_deploy.neurons import HMDFNeuron, LIFNeuron, ParallelHMDF
from hmdf_deploy.quant import QConv2d, QLinear, quantize_weight
from hmdf_deploy.training import checkpoint as ckpt

#: The reference's spike modes (its last directory-name field) → hmdf's `spikes`.
SPIKE_MODES = {"vanilla": "float", "compression": "4bit"}
#: Datasets the reference trains on: (classes, input channels, input size, event input, augment).
DATASETS = {
    "cifar10": (10, 3, (32, 32), False, "crop-flip"),
    "cifar100": (100, 3, (32, 32), False, "crop-flip"),
    "dvs-cifar10": (10, 2, (48, 48), True, None),
    "imagenet": (1000, 3, (224, 224), False, None),
}
#: Datasets hmdf can load for `hmdf quantize`'s check (hmdf_deploy.data.DATASETS).
LOADABLE = ("cifar10", "cifar100", "dvs-cifar10")
#: The reference's net_arch names this importer knows: base, then an optional `_fp` / `_lif…`.
ARCH_BASES = ("vgg11", "vgg13", "resnet18", "resnet19", "resnet34")
#: ResNet blocks per stage layer1..layer4 in the reference (ResNet-19 leaves layer1 empty).
BLOCK_COUNTS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34", (0, 3, 3, 2): "resnet19"}
#: The reference VGG-11 (event input) as its five Sequential stages; "M" = AvgPool2d(2).
VGG11_STAGES = ((64,), (128, "M"), (256, 256, "M"), (512, 512, "M"), (512, 512, "M"))
#: Reference buffers (not parameters) in a state_dict.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "weight_clip_val")
#: hmdf's quantizer must reproduce the reference's effective weights to float32 rounding.
IDEMPOTENCE_RTOL = 1e-6
TERNARY_DELTA = 0.7

_DIR_RE = re.compile(
    r"^(?P<dataset>.+)-(?P<arch>[^-]+)-eca_(?P<eca>\d+)_mem-bn_(?P<mem_bn>\w+?)-parallel_(?P<parallel>\w+?)"
    r"-T(?P<T>\d+)-B(?P<batch>\d+)-use_ter_(?P<ternary>\w+?)-(?P<mode>vanilla|compression)$")
_ARCH_RE = re.compile(r"^(?P<base>vgg11|vgg13|resnet18|resnet19|resnet34)(?:_(?P<variant>fp|lif\w*))?$", re.I)


# ------------------------------------------------------------------------------- small helpers
def _names(keys, limit: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _bool(text: str) -> bool | None:
    return {"true": True, "false": False, "1": True, "0": False}.get(text.lower())


def dataset_name(text: str) -> str | None:
    """The reference's (or a user's) dataset spelling → hmdf's name, None if unknown."""
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    if "dvs" in key and "cifar" in key:
        return "dvs-cifar10"
    return {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet",
            "imagenet1k": "imagenet"}.get(key)


def parse_arch(name: str) -> tuple[str, str | None] | None:
    """A reference net_arch (resnet18, resnet18_fp, resnet18_lif, vgg11, …) → (base, None|fp|lif)."""
    m = _ARCH_RE.match(name.strip())
    if m is None:
        return None
    variant = m.group("variant")
    return m.group("base").lower(), None if variant is None else ("fp" if variant.lower() == "fp" else "lif")


@dataclass(frozen=True)
class DirName:
    """The flags the reference writes into its output directory's name."""

    raw: str
    dataset: str  # as written
    arch: str
    eca: int
    mem_bn: bool | None
    parallel: bool | None
    T: int
    batch_size: int
    ternary: bool | None
    mode: str


def parse_dir_name(name: str) -> DirName | None:
    m = _DIR_RE.match(name)
    if m is None:
        return None
    g = m.groupdict()
    return DirName(name, g["dataset"], g["arch"], int(g["eca"]), _bool(g["mem_bn"]), _bool(g["parallel"]),
                   int(g["T"]), int(g["batch"]), _bool(g["ternary"]), g["mode"])


def find_dir_name(checkpoint: Path) -> DirName | None:
    """The reference's run-directory name: the checkpoint's folder, else the file name's prefix."""
    checkpoint = Path(checkpoint)
    stem = re.sub(r"_snn_(best|current)_checkpoint$", "", checkpoint.stem)
    for candidate in (checkpoint.resolve().parent.name, stem):
        found = parse_dir_name(candidate)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------- 1. loading
@dataclass
class Checkpoint:
    state_dict: dict[str, Tensor]
    epoch: int | None = None
    max_acc1: float | None = None


def load_checkpoint(path: Path) -> Checkpoint:
    """A reference checkpoint, read without executing code: the `model` state_dict (or a bare one)."""
    path = Path(path)
    if not path.is_file():
        raise HmdfError(f"{path} not found" if not path.exists() else f"{path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; the error says enough
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise HmdfError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {e})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it asks for {found.group(1)}" if found else "it holds more than tensors and numbers"
        raise HmdfError(f"{path} is not a weights-only checkpoint ({what}); hmdf never unpickles code: "
                        "re-save it with torch.save({'model': model.state_dict()}, path)") from None
    except Exception as e:  # zip, EOF and OS errors of a truncated or foreign file
        detail = str(e).split("\n")[0].strip()
        detail = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        raise HmdfError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt? {detail[:160]})") from None
    epoch = acc = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        epoch, acc = obj.get("snn_epoch"), obj.get("snn_max_acc1")
        obj = obj["model"]
    is_state = isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    if not is_state or not obj:  # (a bare tensor has no truth value: is_state goes first)
        raise HmdfError(f"{path} is neither the reference's checkpoint (a dict with a 'model' state_dict) "
                        f"nor a bare state_dict of tensors: it holds {_what(obj)}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    if len(state) != len(obj):
        raise HmdfError(f"{path} holds keys both with and without the 'module.' prefix")
    return Checkpoint(state, _number(epoch, int), _number(acc, float))


def _what(obj) -> str:
    """What a loaded checkpoint holds instead of a state dict, in a few words."""
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, dict):
        return "an empty dict" if not obj else "a dict whose values are not all tensors"
    return f"a {type(obj).__name__}"


def _number(value, kind: type):
    """An int or float of the container (possibly saved as a one-element tensor), else None."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ------------------------------------------------------------------------------- 2. inference
@dataclass
class Inferred:
    config: ModelConfig
    dataset: str
    sources: dict[str, str]  # config field (and "dataset") → where its value came from
    notes: list[str] = field(default_factory=list)


def infer(
    state: dict[str, Tensor],
    *,
    mode: str | None = None,
    seca: int | None = None,
    arch: str | None = None,
    dataset: str | None = None,
    dir_name: DirName | None = None,
) -> Inferred:
    """The ModelConfig and dataset of a reference state_dict (see the module docstring)."""
    keys = list(state)
    has = set(keys)
    notes: list[str] = []
    dn = f"the directory name {dir_name.raw!r}" if dir_name else ""

    # --- what the user and the directory name say
    arch_given = None
    if arch is not None:
        arch_given = parse_arch(arch)
        if arch_given is None:
            raise HmdfError(f"--arch {arch!r} is not a reference net_arch hmdf knows; use one of "
                            f"{', '.join(ARCH_BASES)}, optionally with _fp or _lif (full-precision baselines)")
    arch_dir = parse_arch(dir_name.arch) if dir_name else None
    if dir_name and arch_dir is None:
        notes.append(f"the directory name's net_arch {dir_name.arch!r} is not one hmdf knows; ignored")
    if arch_given and arch_dir and arch_given != arch_dir:
        raise HmdfError(f"--arch {arch} contradicts {dn} (net_arch {dir_name.arch})")
    arch_hint, arch_src = (arch_given, "--arch") if arch_given else (arch_dir, "directory name")
    arch_label = f"--arch {arch}" if arch_given else f"the directory name's net_arch {getattr(dir_name, 'arch', '')}"

    # --- family and depth from the keys
    if "classifier.weight" in has:
        family = "vgg"
    elif "fc.0.weight" in has and "fc.2.weight" in has:
        family = "resnet19"
    elif "fc.weight" in has:
        family = "resnet"
    else:
        raise HmdfError("this is not an HD_LIF checkpoint: it has none of classifier.weight (VGG), fc.weight "
                        f"(ResNet-18/34) or fc.0.weight + fc.2.weight (ResNet-19); its keys begin {_names(keys, 4)}")
    if family == "vgg":
        second = state.get("layer2.0.weight")
        width = second.shape[0] if second is not None and second.dim() == 4 else None
        if width == 64:
            raise HmdfError("this is the reference's VGG-13 (layer2.0 has 64 output channels); its layer layout "
                            "is not documented, so hmdf imports only VGG-11")
        if width != 128:
            raise HmdfError(f"this VGG checkpoint's layer2.0.weight is {_shape(second)}; the reference VGG-11 "
                            "has a 3×3 conv with 128 output channels there")
        net = "vgg11"
        first_key = "layer1.0.weight"
    else:
        counts = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{s}.") and k.split(".")[1].isdigit()})
                       for s in range(1, 5))
        net = BLOCK_COUNTS.get(counts)
        if net is None or (net == "resnet19") != (family == "resnet19"):
            raise HmdfError(f"this ResNet checkpoint has {','.join(map(str, counts))} blocks in layer1..layer4 and "
                            f"{'fc.0/fc.2' if family == 'resnet19' else 'fc'} as its head: not the reference's "
                            "ResNet-18 (2,2,2,2 + fc), ResNet-34 (3,4,6,3 + fc) or ResNet-19 (0,3,3,2 + fc.0/fc.2)")
        first_key = "conv1.weight"
    if arch_hint and arch_hint[0] != net:
        raise HmdfError(f"{arch_label} contradicts the checkpoint, whose keys are a {net}")
    first = state.get(first_key)
    if first is None or first.dim() != 4:
        raise HmdfError(f"this {net} checkpoint has no 4-D {first_key} (the first conv); got {_shape(first)}")
    in_channels = int(first.shape[1])
    event = in_channels == 2

    # --- T, classes, neurons, weights
    T_values = {int(v.numel()) for k, v in state.items() if k.endswith(".v_th")}
    if not T_values:
        raise HmdfError(f"this {net} checkpoint has no neuron thresholds (no *.v_th key): not an HD_LIF network")
    if len(T_values) > 1:
        raise HmdfError(f"the neurons' v_th have different lengths {sorted(T_values)}: one T per network expected")
    T = T_values.pop()
    last = state[{"vgg": "classifier.weight", "resnet": "fc.weight", "resnet19": "fc.2.weight"}[family]]
    if last.dim() != 2:
        raise HmdfError(f"the classifier weight has shape {_shape(last)}; a Linear's 2-D weight expected")
    classes = int(last.shape[0])
    ternary = any(k.endswith(".weight_clip_val") for k in keys)
    mem_bn = any(k.endswith(".bn_ratio") for k in keys)
    seca_present = any(k.endswith(".conv.weight") and state[k].dim() == 3 for k in keys)
    parallel = False
    if family != "vgg":
        act2 = sorted({k.rsplit(".act2.", 1)[0] for k in keys if ".act2." in k})
        flags = {f"{b}.act2.v_th" in has and f"{b}.act2.alpha" not in has for b in act2}
        if len(flags) > 1:
            raise HmdfError("some act2 neurons have alpha and some do not: parallel and non-parallel blocks mixed")
        parallel = flags == {True}
    sources = {"arch": "keys", "T": "keys", "num_classes": "keys", "in_channels": "keys", "parallel": "keys",
               "mem_bn": "keys"}

    # neuron kind: the net_arch name says LIF (…_lif…); without one, the key order (LIF lists alpha first)
    alpha_first = _alpha_first(keys)
    if arch_hint:
        lif, sources["neuron"] = arch_hint[1] == "lif", arch_src
        if alpha_first and not lif:
            notes.append(f"the neurons list alpha before v_th, as the LIF baseline does, but {arch_label} names "
                         "an HM-DF network: imported as HM-DF (the keys may have been re-ordered)")
    elif alpha_first:
        raise HmdfError("the neurons list alpha before v_th, as the reference's LIF baseline does (or the keys "
                        f"were re-ordered): pass --arch with the reference net_arch ({net}_lif or {net})")
    else:
        lif, sources["neuron"] = False, "keys (v_th before alpha)"
    if lif and (mem_bn or parallel):
        raise HmdfError(f"{arch_label} names the LIF baseline, but the checkpoint holds "
                        f"{'Mem-BN (bn_ratio)' if mem_bn else 'parallel neurons (act2 without alpha)'}")

    # weights: ternary shows (weight_clip_val); 1-bit and full precision look alike
    fp = bool(arch_hint) and arch_hint[1] in ("fp", "lif")
    if ternary:
        if arch_hint and arch_hint[1] == "fp":
            raise HmdfError(f"{arch_label} names a full-precision baseline, but the checkpoint has ternary convs "
                            "(weight_clip_val buffers)")
        weights, sources["weights"] = "1.5bit", "keys"
    elif arch_hint:
        weights, sources["weights"] = ("fp32" if fp else "1bit"), arch_src
    else:
        weights = None

    # spike mode and SECA variant: not in the keys
    missing = []
    if weights is None:
        missing.append(f"1-bit vs full-precision weights (no weight_clip_val buffers, so the keys cannot tell): "
                       f"--arch {net} for 1-bit, --arch {net}_fp for the full-precision baseline")
    spikes = None
    if mode is not None:
        if mode not in SPIKE_MODES:
            raise HmdfError(f"--mode {mode!r}: choose vanilla (float spikes) or compression (4-bit spikes)")
        if dir_name and dir_name.mode != mode:
            raise HmdfError(f"--mode {mode} contradicts {dn}")
        spikes, sources["spikes"] = SPIKE_MODES[mode], "--mode"
    elif dir_name:
        spikes, sources["spikes"] = SPIKE_MODES[dir_name.mode], "directory name"
    else:
        missing.append("the spike mode (not stored in the weights): --mode vanilla or --mode compression")
    if lif and spikes == "4bit":
        raise HmdfError("a LIF baseline in compression mode has no hmdf equivalent (hmdf's LIF sends binary spikes)")

    seca_variant = 0
    if seca is not None and seca not in (0, 1, 2):
        raise HmdfError(f"--seca {seca}: choose 1 (SECA-I) or 2 (SECA-II)")
    if dir_name and (dir_name.eca != 0) != seca_present:
        raise HmdfError(f"{dn} says eca_{dir_name.eca}, but the checkpoint "
                        f"{'has' if seca_present else 'has no'} SECA weights (attn*.conv.*)")
    if seca is not None and (seca != 0) != seca_present:
        raise HmdfError(f"--seca {seca} contradicts the checkpoint: it {'has' if seca_present else 'has no'} "
                        "SECA weights (attn*.conv.*)")
    if seca is not None and dir_name and seca != dir_name.eca:
        raise HmdfError(f"--seca {seca} contradicts {dn}")
    if seca_present:
        if seca is not None:
            seca_variant, sources["seca"] = seca, "--seca"
        elif dir_name:
            seca_variant, sources["seca"] = dir_name.eca, "directory name"
        else:
            missing.append("the SECA variant (SECA-I and SECA-II store the same keys): --seca 1 or --seca 2")
    else:
        sources["seca"] = "keys"
    if seca_variant not in (0, 1, 2):
        raise HmdfError(f"{dn} says eca_{seca_variant}; the reference's SECA variants are 1 and 2")

    # the dataset: options, directory name, else the classes and input channels
    ds, ds_src = None, ""
    if dataset is not None:
        ds = dataset_name(dataset)
        if ds is None:
            raise HmdfError(f"--dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
        ds_src = "--dataset"
    if dir_name:
        from_dir = dataset_name(dir_name.dataset)
        if from_dir is None:
            notes.append(f"the directory name's dataset {dir_name.dataset!r} is not one hmdf knows; ignored")
        elif ds is not None and ds != from_dir:
            raise HmdfError(f"--dataset {dataset} contradicts {dn}")
        elif ds is None:
            ds, ds_src = from_dir, "directory name"
    if ds is None:
        ds = {(10, False): "cifar10", (100, False): "cifar100", (10, True): "dvs-cifar10",
              (1000, False): "imagenet"}.get((classes, event))
        ds_src = f"{classes} classes, {in_channels} input channels"
        if ds is None:
            missing.append(f"the dataset ({classes} classes, {in_channels} input channels): "
                           f"--dataset {'|'.join(DATASETS)}")
    if missing:
        raise HmdfError("cannot import without " + "; ".join(missing))
    sources["dataset"] = ds_src
    n_classes, n_channels, input_size, _, _ = DATASETS[ds]
    if (n_classes, n_channels) != (classes, in_channels):
        raise HmdfError(f"{ds_src} says {ds} ({n_classes} classes, {n_channels} input channels), but the checkpoint "
                        f"has {classes} classes and {in_channels} input channels")
    sources["input_size"] = f"dataset {ds}"

    # --- the directory name's flags must agree with the keys
    if dir_name:
        # Flags a network ignores are not checked: the full-precision baseline has no ternary
        # convs, the LIF baseline no Mem-BN or parallel neurons, VGG no second block neuron.
        checks = [("T", dir_name.T, T)]
        if not (arch_hint and arch_hint[1] == "fp"):
            checks.append(("use_ter", dir_name.ternary, ternary))
        if not lif:
            checks.append(("mem-bn", dir_name.mem_bn, mem_bn))
            if family != "vgg":
                checks.append(("parallel", dir_name.parallel, parallel))
        for name, said, found in checks:
            if said is not None and said != found:
                raise HmdfError(f"{dn} says {name} {said}, but the checkpoint's keys show {found}")

    # --- architecture details hmdf must be able to represent
    cfg = dict(T=T, num_classes=classes, in_channels=in_channels, input_size=input_size,
               neuron="lif" if lif else "hmdf", weights=weights, spikes=spikes, parallel=parallel, mem_bn=mem_bn,
               seca=seca_variant)
    if family == "vgg":
        if not event:
            raise HmdfError("this VGG-11 takes static images; the reference's pooling layout for static input is not "
                            "documented, so hmdf imports the reference VGG-11 for 2-channel event input only")
        if seca_variant == 2:
            raise HmdfError("SECA-II in the reference VGG-11 is not documented (its SECA sits inside a Sequential, "
                            "with no layer input to add), so importing it would be a guess")
        features = int(state["classifier.weight"].shape[1])
        side = round((features / 512) ** 0.5) * 16
        if 512 * (side // 16) ** 2 != features or (side, side) != tuple(input_size):
            h, w = input_size
            raise HmdfError(f"the classifier takes {features} features; VGG-11 on {ds} ({h}×{w}) gives "
                            f"{512 * (h // 16) * (w // 16)}")
        config = ModelConfig(arch="vgg", cfg=list(VGG11), pool="avg", quantize_stem=True, **cfg)
        sources["cfg"] = sources["quantize_stem"] = "reference VGG-11 layout"
    else:
        k = int(first.shape[-1])
        if k not in (3, 7):
            raise HmdfError(f"conv1.weight is {_shape(first)}: the reference stem is 3×3 (CIFAR) or 7×7 (ImageNet)")
        stem = "imagenet" if k == 7 else "cifar"
        maxpool = not event and classes >= 200  # the reference's rule
        if maxpool != (stem == "imagenet"):
            raise HmdfError(f"the reference puts {'a' if maxpool else 'no'} max-pool after this {k}×{k} stem "
                            f"({classes} classes); hmdf's ResNet has one exactly with the 7×7 stem")
        stem_out = int(first.shape[0])
        width = stem_out // 2 if net == "resnet19" else stem_out
        config = ModelConfig(arch=net, stem=stem, width=width, quantize_stem=False, **cfg)
        sources["stem"] = sources["width"] = "keys"
    config.validate()
    if ds not in LOADABLE:
        notes.append(f"hmdf has no {ds} loader, so `hmdf quantize` cannot check this run on test data")
    return Inferred(config, ds, sources, notes)


def _alpha_first(keys: list[str]) -> bool:
    """True when the first neuron holding both logits lists alpha before v_th (the LIF baseline)."""
    position = {k: i for i, k in enumerate(keys)}
    for k in keys:
        if k.endswith(".v_th"):
            alpha = k[: -len("v_th")] + "alpha"
            if alpha in position:
                return position[alpha] < position[k]
    return False


def _shape(t: Tensor | None) -> str:
    return "absent" if t is None else "[" + ", ".join(map(str, t.shape)) + "]"


# ------------------------------------------------------------------------------- 3. conversion
@dataclass(frozen=True)
class Pair:
    """One reference key and what becomes of it: hmdf key (None: consumed only) and how."""

    ours: str | None
    ref: str
    how: str  # copy | 1bit | 1.5bit | theta0 | clip | optional


def layout(model: nn.Module, config: ModelConfig) -> list[Pair]:
    """The reference keys of `config`, each mapped to hmdf's module of the same role."""
    if isinstance(model, VGG):
        return _vgg_pairs(model)
    if isinstance(model, ResNet):
        return _resnet_pairs(model, config)
    raise TypeError(f"no HD_LIF layout for {type(model).__name__}")


def _weight(ours: str, ref: str, layer: QConv2d | QLinear, optional_bias: bool = False) -> list[Pair]:
    pairs = [Pair(f"{ours}.weight", f"{ref}.weight", "copy" if layer.weights == "fp32" else layer.weights)]
    if layer.weights == "1.5bit":
        pairs.append(Pair(None, f"{ref}.weight_clip_val", "clip"))
    if layer.bias is not None:
        pairs.append(Pair(f"{ours}.bias", f"{ref}.bias", "optional" if optional_bias else "copy"))
    return pairs


def _bn(ours: str, ref: str, bn: nn.Module) -> list[Pair]:
    return [Pair(f"{ours}.{k}", f"{ref}.{k}", "copy") for k in bn.state_dict()]


def _seca(ours: str, ref: str) -> list[Pair]:
    return [Pair(f"{ours}.conv.{k}", f"{ref}.conv.{k}", "copy") for k in ("weight", "bias")]


def _neuron(ours: str, ref: str, module: nn.Module) -> list[Pair]:
    if isinstance(module, ParallelHMDF):
        return [Pair(f"{ours}.b", f"{ref}.v_th", "theta0")]
    pairs = [Pair(f"{ours}.b", f"{ref}.v_th", "copy"), Pair(f"{ours}.a", f"{ref}.alpha", "copy")]
    if isinstance(module, HMDFNeuron) and module.norm is not None:
        pairs += [Pair(f"{ours}.norm.p", f"{ref}.bn_ratio", "copy"), Pair(f"{ours}.norm.q", f"{ref}.mem_ratio", "copy")]
        for t, bn in enumerate(module.norm.bn):
            pairs += _bn(f"{ours}.norm.bn.{t}", f"{ref}.bn.{t}", bn)
    elif not isinstance(module, (HMDFNeuron, LIFNeuron)):
        raise TypeError(f"no HD_LIF layout for neuron {type(module).__name__}")
    return pairs


def _resnet_pairs(model: ResNet, config: ModelConfig) -> list[Pair]:
    pairs = _weight("conv1", "conv1", model.conv1) + _bn("bn1", "bn1", model.bn1)
    depths, _ = LAYOUTS[config.arch]
    first_stage = 2 if config.arch == "resnet19" else 1
    refs = [f"layer{first_stage + s}.{j}" for s, depth in enumerate(depths) for j in range(depth)]
    for i, (block, ref) in enumerate(zip(model.blocks, refs)):
        ours = f"blocks.{i}"
        pairs += _neuron(f"{ours}.act1", f"{ref}.act1", block.act1)
        pairs += _weight(f"{ours}.conv1", f"{ref}.conv1.0", block.conv1)
        pairs += _bn(f"{ours}.bn1", f"{ref}.conv1.1", block.bn1)
        if block.attn1 is not None:
            pairs += _seca(f"{ours}.attn1", f"{ref}.attn1")
        pairs += _neuron(f"{ours}.act2", f"{ref}.act2", block.act2)
        pairs += _weight(f"{ours}.conv2", f"{ref}.conv2.0", block.conv2)
        pairs += _bn(f"{ours}.bn2", f"{ref}.conv2.1", block.bn2)
        if block.attn2 is not None:
            pairs += _seca(f"{ours}.attn2", f"{ref}.attn2")
        if block.downsample is not None:
            pairs += _weight(f"{ours}.downsample.0", f"{ref}.downsample.0", block.downsample[0])
            pairs += _bn(f"{ours}.downsample.1", f"{ref}.downsample.1", block.downsample[1])
    if model.head is not None:  # ResNet-19: fc = Sequential(Linear, neuron, Linear)
        pairs += _weight("head.linear", "fc.0", model.head.linear, optional_bias=True)
        pairs += _neuron("head.act", "fc.1", model.head.act)
        pairs += _weight("fc", "fc.2", model.fc)
    else:
        pairs += _weight("fc", "fc", model.fc)
    return pairs


def _vgg_pairs(model: VGG) -> list[Pair]:
    slots = [(s + 1, entry) for s, stage in enumerate(VGG11_STAGES) for entry in stage]
    if len(slots) != len(model.features):
        raise TypeError("the VGG does not have the reference VGG-11's layers")
    pairs: list[Pair] = []
    index = {s: 0 for s in range(1, len(VGG11_STAGES) + 1)}
    for k, ((stage, entry), layer) in enumerate(zip(slots, model.features)):
        i = index[stage]
        if isinstance(layer, ConvUnit):
            ref, ours = f"layer{stage}", f"features.{k}"
            pairs += _weight(f"{ours}.conv", f"{ref}.{i}", layer.conv) + _bn(f"{ours}.bn", f"{ref}.{i + 1}", layer.bn)
            if layer.attn is not None:
                pairs += _seca(f"{ours}.attn", f"{ref}.{i + 2}")
            n = i + (3 if layer.attn is not None else 2)
            pairs += _neuron(f"{ours}.act", f"{ref}.{n}", layer.act)
            index[stage] = n + 1
        else:  # the pool: an index without keys
            index[stage] = i + 1
    return pairs + _weight("classifier", "classifier", model.classifier)


@dataclass
class Converted:
    state_dict: dict[str, Tensor]  # hmdf keys
    reference_keys: int
    reference_params: int
    warnings: list[str]


def convert(
    state: dict[str, Tensor], model: nn.Module, config: ModelConfig, *, allow_sign_zero: bool = False
) -> Converted:
    """Map a reference state_dict onto `model`'s keys, quantizing with the reference's rules."""
    pairs = layout(model, config)
    ours_sd = model.state_dict()
    expected = {p.ref: p for p in pairs}
    missing = [p.ref for p in pairs if p.ref not in state and p.how != "optional"]
    unexpected = [k for k in state if k not in expected]
    wrong = []
    for p in pairs:
        t = state.get(p.ref)
        if t is None:
            continue
        want = _ref_shape(p, ours_sd, config)
        if tuple(t.shape) != want and not (p.how == "clip" and t.numel() == 2):
            wrong.append(f"{p.ref} {_shape(t)} (expected [{', '.join(map(str, want))}])")
    if missing or unexpected or wrong:
        parts = [f"missing {len(missing)}: {_names(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}: {_names(unexpected)}" if unexpected else "",
                 f"wrong shape {len(wrong)}: {_names(wrong, 3)}" if wrong else ""]
        raise HmdfError(f"the checkpoint does not match the reference layout of {describe(config)} "
                        f"({'; '.join(x for x in parts if x)})")

    out: dict[str, Tensor] = {}
    notes: list[str] = []
    inexact: list[tuple[str, int]] = []
    stale_theta = 0
    for p in pairs:
        t = state.get(p.ref)
        if p.how == "clip":
            lo, hi = (float(v) for v in t.flatten())
            if (lo, hi) != (-1.0, 1.0):
                raise HmdfError(f"{p.ref} is ({lo:g}, {hi:g}); the reference code writes (-1, 1) and its TWN rule "
                                "clips to that range")
            continue
        target = ours_sd[p.ours]
        if p.how == "optional" and t is None:
            out[p.ours] = torch.zeros_like(target)
            notes.append(f"{p.ref} is absent: imported as a zero bias")
        elif p.how == "theta0":
            stale_theta += int(bool((t.flatten()[1:] != 0).any()))
            out[p.ours] = t.flatten()[:1].to(target.dtype).clone()
        elif p.how in ("1bit", "1.5bit"):
            stored, exact, zeros = _quantize_reference(p.ref, t, p.how)
            mine = quantize_weight(stored, p.how).detach().double()
            if zeros:
                inexact.append((p.ref, zeros))
            elif not _close(mine, exact):
                raise HmdfError(f"{p.ref}: hmdf's {p.how} quantizer does not reproduce the reference's weights "
                                f"(max |Δ| {float((mine - exact).abs().max()):.2e}); refusing an inexact import")
            out[p.ours] = stored.to(target.dtype)
        else:
            out[p.ours] = t.detach().to(target.dtype).clone()
    if inexact:
        total = sum(n for _, n in inexact)
        where = _names([f"{k} ({n})" for k, n in inexact], 4)
        if not allow_sign_zero:
            raise HmdfError(f"{total} latent 1-bit weights are exactly 0 in channels with non-zero weights ({where}): "
                            "the reference quantizes them to 0 (sign(0) = 0), which hmdf's 1-bit layers cannot hold; "
                            "pass --allow-sign-zero to import them as +α (outputs will differ slightly)")
        notes.append(f"{total} latent 1-bit weights that are exactly 0 ({where}) were imported as +α: the "
                     "reference quantizes them to 0, so outputs differ slightly")
    if stale_theta:
        notes.append(f"{stale_theta} parallel neurons have non-zero v_th[1:]; the reference uses only v_th[0] "
                     "(its step counter never advances), and so does the import")
    missing_ours = sorted(set(ours_sd) - set(out))
    if missing_ours:  # the layout must cover every hmdf key: a bug, not a user error
        raise RuntimeError(f"HD_LIF layout leaves hmdf keys unset: {_names(missing_ours)}")
    params = sum(int(v.numel()) for k, v in state.items() if not k.endswith(_BUFFERS))
    return Converted(out, len(state), params, notes)


def _ref_shape(p: Pair, ours: dict[str, Tensor], config: ModelConfig) -> tuple[int, ...]:
    if p.how == "clip":
        return (2,)
    if p.how == "theta0":
        return (config.T,)
    return tuple(ours[p.ours].shape)


def _quantize_reference(name: str, w: Tensor, mode: str) -> tuple[Tensor, Tensor, int]:
    """(weights to store, the reference's effective weights in float64, count of inexact zeros).

    Binary: α_o = mean|W[o]|, reference α_o·sign(W) with sign(0) = 0; stored α_o·(±1) with +1 at 0,
    which hmdf's rule maps to itself and which equals the reference unless a channel mixes exact
    zeros with non-zeros. Ternary (TWN, SPEC §5.2): W_c = clip(W, −1, 1), Δ = 0.7·mean|W_c|,
    α = mean |W_c| over |W_c| > Δ, one per layer; stored = effective.
    """
    w64 = w.detach().double()
    if mode == "1bit":
        alpha = w64.abs().flatten(1).mean(dim=1).view(-1, *([1] * (w.dim() - 1)))
        exact = alpha * torch.sign(w64)
        stored = (alpha * torch.where(w64 >= 0, 1.0, -1.0)).float()
        zeros = int(((w64 == 0) & (alpha > 0)).sum())
        return stored, exact, zeros
    wc = w64.clamp(-1.0, 1.0)
    magnitude = wc.abs()
    delta = TERNARY_DELTA * magnitude.mean()
    kept = magnitude > delta
    if not bool(kept.any()):
        raise HmdfError(f"{name}: every latent weight is 0, so the reference's ternary scale is undefined")
    alpha = ((magnitude * kept).sum() / kept.sum()).float().double()  # the float32 value that is stored
    exact = alpha * torch.sign(wc) * kept
    return exact.float(), exact, 0


def _close(a: Tensor, b: Tensor) -> bool:
    scale = max(float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) <= IDEMPOTENCE_RTOL * scale


def describe(config: ModelConfig) -> str:
    name = "VGG-11" if config.arch == "vgg" else {"resnet18": "ResNet-18", "resnet19": "ResNet-19",
                                                   "resnet34": "ResNet-34"}[config.arch]
    bits = {"fp32": "full-precision", "1bit": "1-bit", "1.5bit": "ternary"}[config.weights]
    extras = [x for x, on in (("parallel", config.parallel), ("Mem-BN", config.mem_bn),
                              (f"SECA-{'I' * config.seca}", config.seca), ("LIF", config.neuron == "lif")) if on]
    return f"{name} {bits}, T={config.T}" + "".join(f", {x}" for x in extras)


# ------------------------------------------------------------------------------- the whole import
@dataclass
class ImportResult:
    run_dir: Path
    checkpoint: Path
    config: ModelConfig
    dataset: str
    sources: dict[str, str]
    reference_keys: int
    reference_params: int
    params: int
    epoch: int | None
    max_acc1: float | None
    warnings: list[str]

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint), "from": "hdlif",
                "model": self.config.to_dict(), "dataset": self.dataset, "inferred": self.sources,
                "reference_keys": self.reference_keys, "reference_params": self.reference_params,
                "params": self.params, "epoch": self.epoch, "max_acc1": self.max_acc1, "warnings": self.warnings}


def convert_checkpoint(
    state: dict[str, Tensor],
    *,
    mode: str | None = None,
    seca: int | None = None,
    arch: str | None = None,
    dataset: str | None = None,
    dir_name: DirName | None = None,
    allow_sign_zero: bool = False,
) -> tuple[Inferred, nn.Module, Converted]:
    """In memory: infer the config, build the hmdf network and load the converted weights (eval mode)."""
    inferred = infer(state, mode=mode, seca=seca, arch=arch, dataset=dataset, dir_name=dir_name)
    model = build_model(inferred.config)
    converted = convert(state, model, inferred.config, allow_sign_zero=allow_sign_zero)
    model.load_state_dict(converted.state_dict, strict=True)
    return inferred, model.eval(), converted


def import_hdlif(
    checkpoint: Path,
    out: Path,
    *,
    mode: str | None = None,
    seca: int | None = None,
    arch: str | None = None,
    dataset: str | None = None,
    data_dir: Path | None = None,
    allow_sign_zero: bool = False,
) -> ImportResult:
    """Convert a reference checkpoint into the hmdf run directory `out` (config.json + model.safetensors)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if (out / ckpt.CONFIG).exists():
        raise HmdfError(f"{out} already holds a run; choose another -o")
    if out.exists() and not out.is_dir():  # checked before the slow conversion; make_dir below says the same
        raise HmdfError(f"-o {out} is a file; give a directory")
    loaded = load_checkpoint(checkpoint)
    inferred, model, converted = convert_checkpoint(
        loaded.state_dict, mode=mode, seca=seca, arch=arch, dataset=dataset,
        dir_name=find_dir_name(checkpoint), allow_sign_zero=allow_sign_zero)
    config, ds = inferred.config, inferred.dataset
    from hmdf_deploy.training import TrainConfig  # the run's train section (dataset for `hmdf quantize`)

    train = TrainConfig(dataset=ds, data_dir=None if data_dir is None else str(data_dir))
    n_classes, channels, size, event, augment = DATASETS[ds]
    info = DataInfo(ds, channels, size, n_classes, event, augment)
    warnings_ = inferred.notes + converted.warnings
    result = ImportResult(out, checkpoint, config, ds, inferred.sources, converted.reference_keys,
                          converted.reference_params, sum(p.numel() for p in model.parameters()),
                          loaded.epoch, loaded.max_acc1, warnings_)
    make_dir(out, "-o")
    ckpt.save_weights(out / ckpt.WEIGHTS, model.state_dict())
    ckpt.write_json(out / ckpt.CONFIG, {
        "hmdf_version": __version__, "model": config.to_dict(), "train": asdict(train), "data": asdict(info),
        "import": {"from": "hdlif", "checkpoint": str(checkpoint), "sha256": _sha256(checkpoint),
                   "epoch": loaded.epoch, "max_acc1": loaded.max_acc1, "inferred": inferred.sources,
                   "reference_keys": converted.reference_keys, "reference_params": converted.reference_params,
                   "warnings": warnings_},
    })
    return result


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["Checkpoint", "Converted", "DirName", "ImportResult", "Inferred", "Pair", "convert",
           "convert_checkpoint", "describe", "find_dir_name", "import_hdlif", "infer", "layout",
           "load_checkpoint", "parse_arch", "parse_dir_name"]
