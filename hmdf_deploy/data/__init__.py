"""Datasets for training and evaluation (DESIGN "Data that works offline", SPEC §8).

Built in, offline: ``digits`` (scikit-learn's 8×8 digits) and ``neuro-digits`` (the same digits
recorded by a simulated event camera). From ``--data-dir``: ``cifar10``, ``cifar100``
(python-pickle layout, read without executing pickled code) and ``dvs-cifar10`` (events.npz or
frames per class folder).
"""

from hmdf_deploy.data.augment import augment_batch, mix_batch
from hmdf_deploy.data.event_camera import make_neuro_digit_recordings
from hmdf_deploy.data.registry import DATASETS, DataInfo, Split, describe_input, framing, input_spec, load_dataset

__all__ = [
    "DATASETS",
    "DataInfo",
    "Split",
    "augment_batch",
    "describe_input",
    "framing",
    "input_spec",
    "mix_batch",
    "load_dataset",
    "make_neuro_digit_recordings",
]
