"""The shared parts of the OpenAPI document; each route describes itself in its docstring."""
from __future__ import annotations

from img2img.inference.serve.uploads import MAX_TILE

_ERROR = {
    "type": "object",
    "properties": {"error": {
        "type": "object",
        "properties": {
            "status": {"type": "integer"},
            "code": {"type": "string", "description": "e.g. not_an_image, unknown_field, body_too_large, busy"},
            "field": {"type": ["string", "null"], "description": "the request field at fault"},
            "message": {"type": "string", "description": "what is wrong and what to send instead"},
        },
    }},
}

_DIRECTION = {
    "type": "object",
    "properties": {"in_channels": {"type": "integer"}, "out_channels": {"type": "integer"},
                   "size_multiple": {"type": "integer"}, "ema": {"type": ["boolean", "null"]},
                   "runs_on": {"type": "string"}},
}

_MODEL = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["run", "checkpoint", "safetensors", "onnx"]},
        "file": {"type": "string"},
        "task": {"type": ["string", "null"]},
        "pipeline": {"type": ["string", "null"]},
        "generator": {"type": ["string", "null"]},
        "img2img_version": {"type": ["string", "null"], "description": "the img2img that trained or exported it"},
        "step": {"type": ["integer", "null"]},
        "ema": {"type": ["boolean", "null"]},
        "directions": {"type": "object", "additionalProperties": _DIRECTION},
        "default_direction": {"type": "string"},
        "onnx_metadata": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "metadata_props of an .onnx file"},
    },
}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


COMPONENTS = {
    "schemas": {"Error": _ERROR, "Model": _MODEL},
    "parameters": {
        "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the model's name (GET /v1/models)"},
        "direction": _query("direction", {"type": "string"}, "<from>2<to>, one of the model's directions (GET /v1/models lists them: a2b, b2a, a2c, ...); "
                        "default: the model's first direction"),
        "format": _query("format", {"type": "string", "enum": ["png", "jpg", "webp", "tif", "bmp"]},
                         "the answer's format; default: the upload's own"),
        "tile": _query("tile", {"type": "integer", "minimum": 16, "maximum": MAX_TILE},
                       "translate images larger than this in tiles of this size (at most the server's "
                       "--max-tiles tiles per request)"),
        "overlap": _query("overlap", {"type": "integer", "minimum": 0}, "pixels shared by neighbouring tiles"),
        "tile_norm": _query("tile_norm", {"type": "string", "enum": ["auto", "global", "local"]},
                            "instance-norm statistics of tiles: chosen per image (auto), of the whole image "
                            "(global), or each tile its own (local)"),
        "keep_depth": _query("keep_depth", {"type": "boolean"}, "16-bit PNG/TIFF out for 16-bit input"),
    },
    "requestBodies": {"Image": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"}, "direction": {"type": "string"},
            "format": {"type": "string"}, "tile": {"type": "integer"}, "overlap": {"type": "integer"},
            "tile_norm": {"type": "string"}, "keep_depth": {"type": "boolean"}}}},
    }}},
    "responses": {
        "Image": {"description": "the translated image, at the input's size",
                  "headers": {"X-Img2img-Batch-Size": {"schema": {"type": "integer"},
                                                       "description": "how many requests ran in its batch"}},
                  "content": {t: {"schema": {"type": "string", "format": "binary"}}
                              for t in ("image/png", "image/jpeg", "image/webp", "image/tiff", "image/bmp")}},
        "Error": {"description": "a refused request", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}},
        "Busy": {"description": "the model's queue is full, or it is receiving --max-uploads bodies; retry after "
                                "the Retry-After seconds",
                 "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    },
}
