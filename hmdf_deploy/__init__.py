"""hmdf: train, quantize, export and stream HM-DF spiking neural networks (SPEC.md)."""

from hmdf_deploy.errors import HmdfError

__version__ = "0.1.0"
__all__ = ["HmdfError", "__version__"]
