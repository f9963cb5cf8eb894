"""The toy world: procedural captioned scenes and the small models trained on them (CPU, minutes)."""
