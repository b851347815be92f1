"""Pallas Mosaic GPU (Hopper) pieces shared by the ops' kernels: register/SMEM tile helpers that run the
same in interpret mode and compiled (tiles.py), the padding and device limits of their wrappers
(layout.py), the run of a wide K in launches of fewer columns (ksplit.py) and the gate's gradient of
the backwards from their strict dq and dk passes (gate_grad.py)."""
