"""The networks and losses img2img ships, registered through the same hooks as any plugin."""
