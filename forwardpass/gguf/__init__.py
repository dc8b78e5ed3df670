"""GGUF files: the validating memory-mapped reader (`reader.py`), one bit-exact dequantizer per quant type
(`dequant.py`) and the strict weight store every model loads through (`weights.py`). Imports no other layer."""
