"""DeepSpeed config presets (*.json), installed as the package flip_dist.ds_configs (see pyproject.toml)."""
