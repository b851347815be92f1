"""Token mixers: one interface (base.Mixer), one registry of kinds (registry.py); docs/models.md."""
