"""The deployment form (SPEC §6, §7): fold, pack, the .hmdf file, the reference executor."""

from hmdf_deploy.deploy.fold import fold, with_dtype
from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.deploy.hmdf_file import load_hmdf, save_hmdf
from hmdf_deploy.deploy.inputs import sequence_input
from hmdf_deploy.deploy.quantize import QuantizeResult, quantize_run
from hmdf_deploy.deploy.reference import Reference

__all__ = ["DeployModel", "QuantizeResult", "Reference", "fold", "load_hmdf", "quantize_run", "save_hmdf",
           "sequence_input", "with_dtype"]
