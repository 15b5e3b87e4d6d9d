"""`python -m hmdf_deploy.cli ...`, the form `torchrun` launches: `torchrun --nproc-per-node 2 -m hmdf_deploy.cli train ...`."""

from hmdf_deploy.cli import entry

entry()
