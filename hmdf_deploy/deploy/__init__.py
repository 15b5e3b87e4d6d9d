"""The deployment form (SPEC §6, §7): fold, pack, the .hmdf file, the reference executor."""

from hmdf_deploy.deploy.fold import fold
from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.deploy.hmdf_file import load_hmdf, save_hmdf
from hmdf_deploy.deploy.reference import Reference

__all__ = ["DeployModel", "Reference", "fold", "load_hmdf", "save_hmdf"]
