"""Pallas Triton pieces shared by the ops' kernels: tile helpers (tiles.py), the decay of a chunk per
gate kind (gates.py) and the state passes every chunked op runs (state.py, scan.py)."""
