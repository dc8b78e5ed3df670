"""Matrix kernels over quantized weights: one `Linear` interface, backends chosen at load time."""
from .linear import Linear, make_linear

__all__ = ["Linear", "make_linear"]
