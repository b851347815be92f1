"""Op-agnostic pieces of the Mosaic TPU kernels: tile helpers (`tiles.py`) and the inter-chunk state stages
of every gate kind (`state.py`)."""
