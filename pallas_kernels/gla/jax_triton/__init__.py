"""GLA kernels written in the Triton language and called through jax-triton (`decode.py`); present only
where jax_triton and triton import (the `gpu` extra)."""
