"""benchmarks/mosaic_table.py: the auto table's entries come only from simple-GLA shapes where mosaic_gpu's
fwd+bwd beat triton's by the margin, keyed as MEASURED_FASTER expects."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import mosaic_table  # noqa: E402


def _row(impl, dims, fwd, fwd_bwd, op="simple_gla", gate="g"):
  return {"op": op, "gate": gate, "dims": dims, "impl": impl, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}


def test_faster_keys_and_margin():
  rows = [_row("triton", [8, 2048, 16, 128, 128], 0.28, 1.00), _row("mosaic_gpu", [8, 2048, 16, 128, 128], 0.21, 0.80),
          _row("triton", [8, 2048, 4, 256, 500], 0.46, 1.48), _row("mosaic_gpu", [8, 2048, 4, 256, 500], 0.53, 2.5),
          _row("triton", [4, 4096, 32, 64, 64], 0.3, 1.00, gate="gamma"),
          _row("mosaic_gpu", [4, 4096, 32, 64, 64], 0.2, 0.97, gate="gamma"),  # 1.03x: under the margin
          _row("triton", [8, 2048, 16, 128, 128], 0.5, 2.0, op="gla"), _row("mosaic_gpu", [8, 2048, 16, 128, 128], 0.2, 1.0, op="gla")]
  assert mosaic_table.faster(rows) == {("scalar", "bfloat16", 128, 128): 1.25}
  assert mosaic_table.faster(rows, margin=1.0) == {("scalar", "bfloat16", 128, 128): 1.25,
                                                   ("constant", "bfloat16", 64, 64): 1.03}
  text = mosaic_table.table(rows + [{"op": "gla", "gate": "g", "dims": [1, 2, 3, 4, 5], "impl": "mosaic_gpu",
                                     "error": "no"}])
  assert "1.33× / 1.25×" in text and "error" in text
