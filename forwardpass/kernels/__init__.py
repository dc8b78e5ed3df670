"""Matrix kernels over quantized weights and the native CPU library; what `models/` runs its math through.

Owns: the `Linear` interface and its backends chosen per weight at load (`linear.py`, `int4.py`, `int8.py`,
`gemm.py`, `tiles.py`, `repack.py`), fused projections (`fused.py`), the C sources (`csrc/`) with their build and
ctypes mirror (`native.py`), the choice of build (`select.py`) and the one-call native step (`native_decoder.py`).
Imports nothing from `models/` or `engine/`.
"""

from .fused import MultiLinear, make_multi_linear
from .linear import Linear, make_linear
from .repack import concat_rows, release_heap

__all__ = ["Linear", "MultiLinear", "make_linear", "make_multi_linear", "concat_rows", "release_heap"]
