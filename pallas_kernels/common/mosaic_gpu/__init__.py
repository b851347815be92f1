"""Pallas Mosaic GPU (Hopper) pieces shared by the ops' kernels: register/SMEM tile helpers that run the
same in interpret mode and compiled (tiles.py), the padding and device limits of their wrappers
(layout.py) and the run of a wide K in launches of fewer columns (ksplit.py)."""
