"""Pallas Mosaic GPU (Hopper) pieces shared by the ops' kernels: register/SMEM tile helpers that run the
same in interpret mode and compiled (tiles.py) and the padding and device limits of their wrappers
(layout.py)."""
