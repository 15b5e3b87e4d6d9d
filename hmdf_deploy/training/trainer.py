"""`hmdf train`: build the network, train it, keep a resumable run directory.

`start(out, model_config, train_config)` creates a run and trains it; `resume(run_dir)` continues
one exactly where it stopped. Everything random in an epoch (order, augmentation, Random
Backprop's t*) is drawn from generators seeded by (seed, epoch, batch), so a resumed run is
bit-equal to an uninterrupted one, even when it stopped in the middle of an epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import torch

from hmdf_deploy import __version__
from hmdf_deploy.atomic import make_dir
from hmdf_deploy.data import DataInfo, Split, augment_batch, load_dataset, mix_batch
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig, build_model
from hmdf_deploy.training import checkpoint as ckpt
from hmdf_deploy.training.distributed import any_rank, barrier, init_distributed, shutdown, wrap
from hmdf_deploy.training.steps import MODES, evaluate, train_batch

#: Seeds are 0 <= seed < 2**63: torch's generators take a signed 64-bit seed. The per-batch seeds
#: derived from it are reduced modulo the same bound (`_batch_seed`).
SEED_LIMIT = 2**63
#: The largest learning rate a float32 parameter update can hold (torch.finfo(torch.float32).max):
#: SGD multiplies float32 gradients by it, and a larger one cannot even be converted.
LR_LIMIT = float(torch.finfo(torch.float32).max)


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    mode: str = "online"
    random_backprop: bool = False
    mix: bool = False  # Mixup / CutMix on every batch (SPEC §4.5); runs from before it existed: off
    epochs: int = 20
    batch_size: int = 64  # per process under torchrun
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def validate(self) -> "TrainConfig":
        if self.mode not in MODES:
            raise HmdfError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.random_backprop and self.mode == "stbp":
            raise HmdfError("--random-backprop is an online method; it cannot be combined with --mode stbp")
        if self.epochs < 1 or self.batch_size < 1:
            raise HmdfError("--epochs and --batch-size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise HmdfError(f"--lr must be a positive number, got {self.lr}")
        if self.lr > LR_LIMIT:
            raise HmdfError(f"--lr must be at most {LR_LIMIT:.4g} (the largest float32), got {self.lr:g}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise HmdfError(f"--seed must be a non-negative integer below 2**63 ({SEED_LIMIT}), got {self.seed!r}")
        return self


class TrainingInterrupted(HmdfError):
    """Stopped on request (Ctrl-C); the run directory holds a resumable checkpoint."""


class Progress:
    """Callbacks from the training loop; the library never prints. The CLI renders them."""

    def start(self, epochs: int, batches: int, epoch: int, batch: int) -> None: ...

    def batch(self, epoch: int, batch: int, loss: float, acc: float) -> None: ...

    def epoch(self, record: dict) -> None: ...


@dataclass
class Position:
    """Where training stands: the next (epoch, batch) and the running sums of the current epoch."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0


def start(out: Path, model_config: ModelConfig, train_config: TrainConfig, *, progress: Progress | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Create the run directory `out` for a new run and train it. Returns the last metrics record.

    The dataset sets `model_config`'s in_channels, input_size and num_classes (and quantize_stem for
    event data, SPEC §5). `progress` receives the training's progress (silent by default);
    `should_stop` is asked before every batch: True saves a resumable checkpoint and raises
    `TrainingInterrupted`."""
    out = Path(out)
    if (out / ckpt.CONFIG).exists() and not _never_saved(out):
        raise HmdfError(f"{out} already holds a training run; continue it with --resume {out} or choose another --out")
    train_config.validate()
    train, test, info = _load_data(train_config, model_config.T)
    model_config = replace(
        model_config, in_channels=info.in_channels, input_size=tuple(info.input_size),
        num_classes=info.num_classes, quantize_stem=model_config.quantize_stem or info.event,
    ).validate()
    make_dir(out, "--out")
    config = {"hmdf_version": __version__, "model": model_config.to_dict(),
              "train": asdict(train_config), "data": asdict(info)}
    if init_distributed().main:
        ckpt.write_json(out / ckpt.CONFIG, config)
    return _fit(out, model_config, train_config, (train, test, info), progress, should_stop)


def _never_saved(out: Path) -> bool:
    """Whether `out` holds only what a start that failed before its first checkpoint leaves (a
    training config.json and an empty metrics.jsonl): a new start may take the directory over, and
    rewrites exactly those two files. Anything else there (weights, a train state, metrics, an
    imported or foreign config.json) is a run, which is refused."""
    if any((out / f).exists() or (out / f).is_symlink() for f in (ckpt.WEIGHTS, ckpt.STATE)):
        return False
    metrics = out / ckpt.METRICS
    try:
        if metrics.is_symlink() or (metrics.exists() and (not metrics.is_file() or metrics.stat().st_size)):
            return False
        config = ckpt.read_json(out / ckpt.CONFIG)
    except (HmdfError, OSError):
        return False
    return isinstance(config, dict) and {"hmdf_version", "model", "train"} <= set(config) and "import" not in config


def resume(run_dir: Path, *, progress: Progress | None = None, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Continue the run in `run_dir` from its last checkpoint (bit-exactly); `progress` and
    `should_stop` as for `start`."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise HmdfError(f"--resume {run_dir} is a file; give a training run directory")
    model_config, train_config = load_run_config(run_dir)  # no train_state.pt yet: starts from epoch 0
    if "import" in ckpt.read_json(run_dir / ckpt.CONFIG):
        raise HmdfError(f"{run_dir} holds an imported checkpoint, not a training run: it cannot be resumed")
    data = _load_data(train_config, model_config.T)
    return _fit(run_dir, model_config, train_config, data, progress, should_stop)


def load_run_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    config = ckpt.read_json(Path(run_dir) / ckpt.CONFIG)
    try:
        known = {f.name for f in fields(TrainConfig)}
        train = TrainConfig(**{k: v for k, v in config["train"].items() if k in known})
        return ModelConfig.from_dict(config["model"]), train.validate()
    except (KeyError, TypeError) as e:
        raise HmdfError(f"{run_dir / ckpt.CONFIG} is not an hmdf run config ({e})") from None


def load_trained(run_dir: Path) -> torch.nn.Module:
    """The trained network of a run directory, in eval mode."""
    model_config, _ = load_run_config(run_dir)
    model = build_model(model_config)
    weights = ckpt.load_weights(Path(run_dir) / ckpt.WEIGHTS)
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise HmdfError(f"{run_dir / ckpt.WEIGHTS} does not match config.json "
                        f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(unexpected) or '-'})")
    shapes = [f"{k} is {tuple(weights[k].shape)}, config.json makes it {tuple(v.shape)}"
              for k, v in expected.items() if weights[k].shape != v.shape]
    if shapes:
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        raise HmdfError(f"{run_dir / ckpt.WEIGHTS} does not match config.json ({'; '.join(shapes[:3])}{more})")
    model.load_state_dict(weights)
    return model.eval()


def _load_data(train_config: TrainConfig, T: int) -> tuple[Split, Split, DataInfo]:
    data_dir = Path(train_config.data_dir) if train_config.data_dir else None
    return load_dataset(train_config.dataset, T=T, data_dir=data_dir, seed=train_config.seed)


def _fit(
    run_dir: Path,
    model_config: ModelConfig,
    tc: TrainConfig,
    data: tuple[Split, Split, DataInfo],
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict:
    progress = progress or Progress()
    train, test, info = data
    d = init_distributed()
    torch.manual_seed(tc.seed)
    net = build_model(model_config).to(d.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=tc.lr, momentum=tc.momentum,
                                nesterov=True, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
    pos = _restore(run_dir, net, optimizer, scheduler) if (run_dir / ckpt.STATE).is_file() else Position()
    if d.main:  # epochs after the checkpoint are redone: drop their records
        ckpt.truncate_metrics(run_dir / ckpt.METRICS, before_epoch=pos.epoch + 1)
    model = wrap(net, d)
    static = not info.event
    n_local = len(train.y) // d.world
    per_epoch = max(1, n_local // tc.batch_size)
    record: dict = {}
    if d.main:
        progress.start(tc.epochs, per_epoch, pos.epoch, pos.batch)
    try:
        while pos.epoch < tc.epochs:
            order = _epoch_order(len(train.y), tc.seed, pos.epoch)[d.rank * n_local : (d.rank + 1) * n_local]
            started = time.perf_counter()
            for b in range(pos.batch, per_epoch):
                if should_stop():
                    if d.main:
                        _save_state(run_dir, net, optimizer, scheduler, replace(pos, batch=b))
                    raise TrainingInterrupted(
                        f"interrupted at epoch {pos.epoch + 1}, batch {b}; continue with: hmdf train --resume {run_dir}")
                idx = order[b * tc.batch_size : (b + 1) * tc.batch_size]
                gen = torch.Generator().manual_seed(_batch_seed(tc.seed, pos.epoch, b))
                x, y = train.x[idx], train.y[idx]
                if info.augment:
                    x = augment_batch(x, info.augment, gen)
                target = y  # the loss's; accuracy is counted on the labels
                if tc.mix:
                    x, target = mix_batch(x, y, model_config.num_classes, gen)
                t_star = int(torch.randint(model_config.T, (1,), generator=gen)) if tc.random_backprop else None
                r = train_batch(model, optimizer, x.to(d.device), target.to(d.device), T=model_config.T,
                                static=static, mode=tc.mode, t_star=t_star)
                if any_rank(not math.isfinite(r.loss), d):  # nothing saved: the last checkpoint stays
                    raise _diverged(f"at epoch {pos.epoch + 1}, batch {b}: the loss is {r.loss}", tc)
                hits = int((r.logits.argmax(1) == y.to(d.device)).sum())
                pos = replace(pos, batch=b + 1, loss_sum=pos.loss_sum + r.loss, correct=pos.correct + hits,
                              seen=pos.seen + len(y))
                if d.main:
                    progress.batch(pos.epoch, b, r.loss, hits / len(y))
            if any_rank(not all(bool(torch.isfinite(p).all()) for p in net.parameters()), d):
                raise _diverged(f"in epoch {pos.epoch + 1}: its last step left NaN or Inf weights", tc)
            scheduler.step()
            record = _epoch_record(pos, per_epoch, optimizer, time.perf_counter() - started,
                                   evaluate(model, test.x.to(d.device), test.y.to(d.device), static=static))
            pos = Position(epoch=pos.epoch + 1)
            if d.main:
                # The state goes last: once it says "epoch done", weights and metrics already are.
                ckpt.save_weights(run_dir / ckpt.WEIGHTS, net.state_dict())
                ckpt.append_metrics(run_dir / ckpt.METRICS, record)
                _save_state(run_dir, net, optimizer, scheduler, pos)
                progress.epoch(record)
            barrier(d)
    finally:
        shutdown(d)
    return record or (ckpt.read_metrics(run_dir / ckpt.METRICS) or [{}])[-1]


def _diverged(where: str, tc: TrainConfig) -> HmdfError:
    return HmdfError(f"training diverged {where}; start a new run with a lower --lr (this one was {tc.lr:g})")


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_batch_seed(seed, epoch, -1)))


def _batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A distinct generator seed per (seed, epoch, batch); batch -1 is the epoch's order. Reduced
    modulo 2**63 for torch, which leaves every value below it (all seeds up to about 9e6) as it was."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + batch + 1) % SEED_LIMIT


def _epoch_record(pos: Position, batches: int, optimizer, seconds: float, test_acc: list[float]) -> dict:
    return {
        "epoch": pos.epoch + 1,
        "train_loss": pos.loss_sum / max(1, batches),
        "train_acc": pos.correct / max(1, pos.seen),
        "test_acc": test_acc,
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "batches_per_s": batches / max(seconds, 1e-9),
    }


def _save_state(run_dir: Path, net, optimizer, scheduler, pos: Position) -> None:
    ckpt.save_state(run_dir / ckpt.STATE, {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": asdict(pos),
    })


def _restore(run_dir: Path, net, optimizer, scheduler) -> Position:
    state = ckpt.load_state(run_dir / ckpt.STATE)
    try:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        pos = Position(**state["position"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise HmdfError(f"{run_dir / ckpt.STATE} does not match this run's config ({type(e).__name__}: {e})") from None
    return pos
