"""img2img-cut's pipelines (demo-cut, horse2zebra-cut): package data, registered through register_pipelines."""
