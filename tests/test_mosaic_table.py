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


def test_pair_entries_take_the_smallest_winning_b_h():
  """mosaic_gpu_fwd entries (the pair's tables): per key, the smallest B·H from which on every measured
  shape of the key won by the margin; a losing larger B·H above a winning smaller one gives no entry."""
  pair = "mosaic_gpu_fwd"
  rows = [_row("triton", [8, 2048, 16, 128, 128], 0.27, 1.03), _row(pair, [8, 2048, 16, 128, 128], 0.22, 0.97),
          _row("triton", [2, 8192, 16, 128, 128], 0.45, 1.39), _row(pair, [2, 8192, 16, 128, 128], 0.35, 1.20),
          _row("triton", [4, 4096, 32, 64, 64], 0.30, 0.95), _row(pair, [4, 4096, 32, 64, 64], 0.20, 0.85),
          _row("triton", [8, 2048, 4, 128, 256], 0.14, 0.57), _row(pair, [8, 2048, 4, 128, 256], 0.13, 0.56),
          _row("triton", [8, 2048, 4, 256, 512], 1.6, 4.1, op="gla"), _row(pair, [8, 2048, 4, 256, 512], 1.4, 3.9, op="gla")]
  # 128,128: B·H 32 won 1.16x and B·H 128 1.06x → from 32 on, the slower ratio; 64,64 1.12x; 128,256 1.02x: none
  assert mosaic_table.faster_from(rows, impl=pair) == {("scalar", "bfloat16", 128, 128): (32, 1.06),
                                                       ("scalar", "bfloat16", 64, 64): (128, 1.12)}
  assert mosaic_table.faster_from(rows, impl=pair, op="gla") == {("bfloat16", 256, 512): (32, 1.05)}
  rows[1] = _row(pair, [8, 2048, 16, 128, 128], 0.30, 1.10)  # B·H 128 now loses: B·H 32's win cannot stand
  assert ("scalar", "bfloat16", 128, 128) not in mosaic_table.faster_from(rows, impl=pair)
  rows[3] = _row(pair, [2, 8192, 16, 128, 128], 0.50, 1.50)  # B·H 32 loses, 128 wins → from 128 on
  rows[1] = _row(pair, [8, 2048, 16, 128, 128], 0.22, 0.90)
  assert mosaic_table.faster_from(rows, impl=pair)[("scalar", "bfloat16", 128, 128)] == (128, 1.14)
  text = mosaic_table.table(rows, pair)
  assert "triton ÷ mosaic_gpu_fwd" in text and "1.23× / 1.14×" in text
