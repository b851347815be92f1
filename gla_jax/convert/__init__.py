"""fla checkpoint import/export (config.json + safetensors, fla's parameter names, torch layouts)."""

from gla_jax.convert.fla import (
    config_from_fla,
    config_to_fla,
    fla_state_dict,
    load_fla_checkpoint,
    save_fla_checkpoint,
)

__all__ = ["config_from_fla", "config_to_fla", "fla_state_dict", "load_fla_checkpoint",
           "save_fla_checkpoint"]
