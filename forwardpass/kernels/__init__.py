"""Matrix kernels over quantized weights: one `Linear` interface, backends chosen at load time."""
from .linear import Linear, make_linear
from .repack import concat_rows, release_heap

__all__ = ["Linear", "make_linear", "concat_rows", "release_heap"]
