"""Trainer tests compile the same tiny model many times (one Trainer per scenario): a persistent compilation
cache in the session's temp dir turns the repeats into cache hits. Enabled only around tests/train."""

import jax
import pytest

try:
  from jax._src import compilation_cache as _cc  # private: if it moves, the tests just run uncached
except ImportError:  # pragma: no cover
  _cc = None


@pytest.fixture(scope="package", autouse=True)
def _compilation_cache(tmp_path_factory):
  if _cc is None or not hasattr(_cc, "reset_cache"):
    yield
    return
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  saved = {k: getattr(jax.config, k) for k in keys}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "jax_cache_train"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _cc.reset_cache()
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  _cc.reset_cache()
