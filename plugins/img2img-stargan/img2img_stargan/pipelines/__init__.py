"""Built-in pipelines of img2img-stargan (package data, registered through ``register_pipelines``)."""
