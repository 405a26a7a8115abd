"""Pipelines: the schema (`schema`), safe YAML reading (`yaml_io`) and validation (`pipeline`).

Plugins import the pipeline and component-spec models from here: ``from img2img.config import
PipelineBase, GeneratorSpec, DiscriminatorSpec, LossSpec, StrictModel, TrainConfig``.
"""
from img2img.config.pipeline import dump_pipeline, load_pipeline, pipeline_from_dict, validate_pipeline
from img2img.config.schema import (
                                   PATH_FIELDS,
                                   Channels,
                                   ComponentSpec,
                                   DataConfig,
                                   Direction,
                                   DiscriminatorSpec,
                                   GeneratorSpec,
                                   LossSpec,
                                   PipelineBase,
                                   StrictModel,
                                   TrainConfig,
                                   ValConfig,
)
from img2img.config.yaml_io import (
                                   MAX_YAML_DEPTH,
                                   MAX_YAML_VALUES,
                                   apply_overrides,
                                   load_yaml_text,
                                   parse_override,
                                   read_yaml,
)

__all__ = [
    "MAX_YAML_DEPTH", "MAX_YAML_VALUES", "PATH_FIELDS", "Channels", "ComponentSpec", "DataConfig", "Direction",
    "DiscriminatorSpec", "GeneratorSpec", "LossSpec", "PipelineBase", "StrictModel", "TrainConfig", "ValConfig",
    "apply_overrides", "dump_pipeline", "load_pipeline", "load_yaml_text", "parse_override", "pipeline_from_dict",
    "read_yaml", "validate_pipeline",
]
