"""Matrix kernels over quantized weights and the native CPU library; what `models/` runs its math through.

Owns: the `Linear` interface and its backends chosen per weight at load (`linear.py`, `int4.py`, `int8.py`,
`gemm.py`, `tiles.py`, `repack.py`), fused projections (`fused.py`), the C sources (`csrc/`) with their build and
ctypes mirror (`native.py`), the choice of build (`select.py`), the one-call native step (`native_decoder.py`),
and `KernelChoice` (`choice.py`): which of them a model is loaded with, passed down at load.
Imports nothing from `models/` or `engine/`.
"""

from .choice import KernelChoice
from .fused import MultiLinear, make_multi_linear
from .linear import Linear, make_linear
from .repack import concat_rows, release_heap

__all__ = ["KernelChoice", "Linear", "MultiLinear", "make_linear", "make_multi_linear", "concat_rows", "release_heap"]
