"""YAML augmentation stages: validation messages, sizes, determinism of the built pipelines."""
from __future__ import annotations

import json

import numpy as np
import pytest

from img2img.data import sizes as S
from img2img.data import transforms as T
from img2img.errors import PipelineError

REFERENCE = [
    {"Resize": {"height": 72, "width": 72}},
    {"RandomCrop": {"height": 64, "width": 64}},
    {"HorizontalFlip": {"p": 0.5}},
]


def paths(problems):
    return [p for p, _ in problems]


def test_reference_pipeline_is_valid_and_sized():
    assert S.validate_stages(REFERENCE, "data.transforms") == []
    assert S.output_size(REFERENCE) == (64, 64)
    assert S.min_input_size(REFERENCE) is None  # the resize comes before the crop


def test_empty_and_null_stage_lists_are_valid():
    assert S.validate_stages([], "data.transforms") == []
    assert S.validate_stages(None, "data.transforms") == []
    assert S.output_size([], (30, 40)) == (30, 40)
    assert S.min_input_size([]) is None


def test_typo_in_transform_name_suggests_the_right_one():
    problems = S.validate_stages([{"HorizantalFlip": {"p": 0.5}}], "data.transforms")
    assert paths(problems) == ["data.transforms.0.HorizantalFlip"]
    assert "did you mean 'HorizontalFlip'?" in problems[0][1]


def test_unknown_argument_is_reported_with_its_path_and_suggestion():
    problems = S.validate_stages(
        [{"HorizontalFlip": None}, {"RandomCrop": {"heigth": 64, "width": 64}}], "data.transforms"
    )
    assert paths(problems) == ["data.transforms.1.RandomCrop.heigth"]
    assert "did you mean 'height'?" in problems[0][1]


def test_bad_values_are_reported_per_argument():
    problems = S.validate_stages(
        [{"Resize": {"height": -3, "width": 64}}, {"HorizontalFlip": {"p": 2}}], "data.transforms"
    )
    assert paths(problems) == ["data.transforms.0.Resize.height", "data.transforms.1.HorizontalFlip.p"]
    assert "greater than or equal to 1" in problems[0][1] and "-3" in problems[0][1]
    assert "pydantic" not in problems[0][1] and "\n" not in problems[0][1]


def test_missing_required_argument():
    problems = S.validate_stages([{"RandomCrop": {"width": 64}}], "data.transforms")
    assert paths(problems) == ["data.transforms.0.RandomCrop.height"]
    assert "required" in problems[0][1].lower()


@pytest.mark.parametrize(
    "stages, where",
    [
        ("HorizontalFlip", "data.transforms"),
        ([{"HorizontalFlip": 5}], "data.transforms.0"),
        ([{"HorizontalFlip": {}, "VerticalFlip": {}}], "data.transforms.0"),
        ([None], "data.transforms.0"),
        ([42], "data.transforms.0"),
        ([{"Resize": {"height": "tall", "width": 3}}], "data.transforms.0.Resize.height"),
        ([{"OneOf": {"transforms": "Blur"}}], "data.transforms.0.OneOf.transforms"),
    ],
)
def test_malformed_stages_are_problems_not_exceptions(stages, where):
    problems = S.validate_stages(stages, "data.transforms")
    assert problems and problems[0][0] == where


def test_transforms_that_cannot_work_here_are_explained():
    problems = S.validate_stages([{"Normalize": None}, {"ToTensorV2": None}], "data.transforms")
    assert paths(problems) == ["data.transforms.0.Normalize", "data.transforms.1.ToTensorV2"]
    assert "[-1, 1]" in problems[0][1]


def test_nested_compositions_are_validated_with_their_paths():
    stages = [{"OneOf": {"transforms": [{"Blur": {"blur_limit": 3}}, {"GausianBlur": None}], "p": 0.5}}]
    problems = S.validate_stages(stages, "data.transforms")
    assert paths(problems) == ["data.transforms.0.OneOf.transforms.1.GausianBlur"]
    assert "GaussianBlur" in problems[0][1]
    good = [{"OneOf": {"transforms": [{"Blur": {"blur_limit": 3}}, {"GaussianBlur": None}]}}]
    assert S.validate_stages(good, "data.transforms") == []


def test_crop_larger_than_what_earlier_stages_produce():
    stages = [{"Resize": {"height": 32, "width": 32}}, {"RandomCrop": {"height": 64, "width": 64}}]
    problems = S.validate_stages(stages, "data.transforms")
    assert paths(problems) == ["data.transforms.1.RandomCrop"]
    assert "32x32" in problems[0][1] and "pad_if_needed" in problems[0][1]


def test_output_size():
    assert S.output_size([{"RandomResizedCrop": {"size": [48, 40]}}]) == (48, 40)
    assert S.output_size([{"CenterCrop": {"height": 20, "width": 30}}, {"Transpose": {"p": 1}}]) == (30, 20)
    assert S.output_size([{"HorizontalFlip": None}]) is None  # keeps an unknown input size
    assert S.output_size([{"HorizontalFlip": None}], (30, 40)) == (30, 40)
    assert S.output_size([{"LongestMaxSize": {"max_size": 64}}], (128, 100)) == (64, 50)
    assert S.output_size([{"PadIfNeeded": {"min_height": 64, "min_width": 64}}], (50, 80)) == (64, 80)
    assert S.output_size([{"RandomScale": None}], (64, 64)) is None
    # a size change applied only sometimes gives no single size
    assert S.output_size([{"Resize": {"height": 8, "width": 8, "p": 0.5}}], (16, 16)) is None
    both = [{"OneOf": {"transforms": [{"Resize": {"height": 8, "width": 8}},
                                      {"RandomResizedCrop": {"size": [8, 8]}}], "p": 1}}]
    assert S.output_size(both) == (8, 8)
    assert S.output_size(REFERENCE + [{"Rotate": {"limit": 10}}]) == (64, 64)
    assert S.output_size([{"Bogus": None}]) is None


def test_min_input_size():
    assert S.min_input_size([{"RandomCrop": {"height": 64, "width": 32}}]) == (64, 32)
    assert S.min_input_size([{"HorizontalFlip": None}, {"CenterCrop": {"height": 10, "width": 20}}]) == (10, 20)
    assert S.min_input_size([{"Transpose": {"p": 1}}, {"RandomCrop": {"height": 64, "width": 32}}]) == (32, 64)
    assert S.min_input_size([{"RandomRotate90": None}, {"RandomCrop": {"height": 64, "width": 32}}]) == (64, 64)
    assert S.min_input_size([{"Crop": {"x_max": 30, "y_max": 20}}]) == (20, 30)
    # padding, pad_if_needed or a resize before the crop accept any input
    assert S.min_input_size([{"PadIfNeeded": {"min_height": 64, "min_width": 64}},
                             {"RandomCrop": {"height": 64, "width": 64}}]) is None
    assert S.min_input_size([{"RandomCrop": {"height": 64, "width": 64, "pad_if_needed": True}}]) is None
    assert S.min_input_size([{"SmallestMaxSize": {"max_size": 64}}, {"RandomCrop": {"height": 64, "width": 64}}]) is None


def test_paired_compose_applies_identical_parameters_to_the_target():
    stages = [{"RandomCrop": {"height": 24, "width": 24}}, {"HorizontalFlip": {"p": 0.5}},
              {"Rotate": {"limit": 30, "p": 1.0}}]
    compose = T.build_transform(stages, paired=True)
    image = np.random.default_rng(0).random((40, 50, 3), dtype=np.float32)
    crops = set()
    for seed in range(8):
        T.reseed(compose, seed)
        out = compose(image=image, target=image.copy())
        assert out["image"].shape == (24, 24, 3)
        np.testing.assert_array_equal(out["image"], out["target"])
        crops.add(out["image"].tobytes())
    assert len(crops) > 1  # the draws do differ between seeds


def test_reseed_makes_a_sample_reproducible():
    compose = T.build_transform(REFERENCE + [{"ColorJitter": {"p": 1.0}}], paired=False)
    image = np.random.default_rng(1).random((80, 80, 3), dtype=np.float32)
    T.reseed(compose, 123)
    first = compose(image=image)["image"]
    compose(image=image)  # advances the random state
    T.reseed(compose, 123)
    np.testing.assert_array_equal(compose(image=image)["image"], first)
    T.reseed(compose, 124)
    assert not np.array_equal(compose(image=image)["image"], first)


def test_build_transform_rejects_bad_stages_with_every_problem():
    with pytest.raises(PipelineError) as info:
        T.build_transform([{"Flipp": None}, {"Resize": {"height": 0, "width": 4}}], paired=False)
    assert len(info.value.problems) == 2


def test_describe_is_json_and_records_defaults():
    record = T.describe(T.build_transform(REFERENCE, paired=True, seed=3))
    text = json.dumps(record)
    stages = record["transform"]["transforms"]
    assert [s["__class_fullname__"] for s in stages] == ["Resize", "RandomCrop", "HorizontalFlip"]
    assert "interpolation" in stages[0] and record["transform"]["additional_targets"] == {"target": "image"}
    assert json.loads(text) == record


def test_min_input_size_when_a_stage_applies_only_sometimes():
    crop = {"RandomCrop": {"height": 64, "width": 32}}
    assert S.min_input_size([{"Transpose": {"p": 0.5}}, crop]) == (64, 64)
    assert S.min_input_size([{"PadIfNeeded": {"min_height": 64, "min_width": 64, "p": 0.5}}, crop]) == (64, 32)
