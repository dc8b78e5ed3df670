"""Model architectures, one file each, found through `registry.ARCHITECTURES`: typed hyperparameters from the
metadata (`config.py`), the shared decoder skeleton (`base.py`), layers, attention and the KV cache
(`attention.py`). Math runs through `kernels/`; nothing here imports `engine/`."""
