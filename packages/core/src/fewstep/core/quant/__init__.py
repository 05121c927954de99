"""Post-training quantization of diffusion models (PTQ4DM, Q-Diffusion, TFMQ-DM) with real low-bit
execution: ``quantize(denoiser, QuantConfig(scheme="w8a8"))`` returns a Denoiser whose layers hold
packed int8 / int4 / fp8 weights and run on integer or FP8 kernels."""

from .config import SCHEMES, QuantConfig
from .layers import QuantLayer
from .quantize import plan_layers, quantize, restore_structure, set_backend, weight_bytes

__all__ = ["SCHEMES", "QuantConfig", "QuantLayer", "plan_layers", "quantize", "restore_structure", "set_backend",
           "weight_bytes"]
