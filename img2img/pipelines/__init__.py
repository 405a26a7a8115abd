"""The built-in pipelines: YAML files shipped as package data, found by name (see img2img.config.builtin)."""
