"""Training of SPEC §4: online, online-accumulate, Random Backprop and the STBP baseline."""

from hmdf_deploy.training.recipes import RECIPES, recipe
from hmdf_deploy.training.steps import MODES, evaluate, train_batch
from hmdf_deploy.training.trainer import (
    Progress,
    TrainConfig,
    TrainingInterrupted,
    load_run_config,
    load_trained,
    resume,
    start,
)

__all__ = ["RECIPES", "MODES", "Progress", "TrainConfig", "TrainingInterrupted", "evaluate",
           "load_run_config", "load_trained", "recipe", "resume", "start", "train_batch"]
