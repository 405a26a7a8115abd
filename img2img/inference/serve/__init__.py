"""`img2img serve`: a web page and an HTTP API for trained and exported models (Starlette + uvicorn).

    from img2img.inference.serve import ModelTable, ServeSettings, create_app
    app = create_app(ModelTable.from_args(["runs/h2z"]), ServeSettings(max_pixels=4_000_000))

The ASGI stack is imported here and nowhere else in img2img.
"""
from img2img.inference.serve.app import ServeSettings, create_app
from img2img.inference.serve.models import ModelSpec, ModelTable, TileOptions, parse_model_specs
from img2img.inference.serve.server import serve

__all__ = ["ModelSpec", "ModelTable", "ServeSettings", "TileOptions", "create_app", "parse_model_specs", "serve"]
