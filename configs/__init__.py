"""Experiment configs: each `configs/<name>.py` defines `get_config() -> train.config.TrainConfig`."""
