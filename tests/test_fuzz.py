"""Fuzzing the input boundaries: whatever a user hands img2img, it answers with a result or an
Img2ImgError that names the file, never with another exception.

Pipelines (YAML text, mutated shipped pipelines, --set overrides), image files, checkpoint files,
checkpoint contents and ONNX files each get random and mutated inputs.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from img2img.engine.checkpoint import load_checkpoint, load_generator
from img2img.config import PipelineBase, load_pipeline
from img2img.data import read_image
from img2img.errors import Img2ImgError, PipelineError

ROOT = Path(__file__).resolve().parents[1]
# damaged files make Pillow and torch warn before they fail; the failure is what is checked
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fuzz(examples: int) -> settings:
    """Modest example counts keep the file fast; a failing example is printed for reproduction."""
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load_or_pipeline_error(path: Path, overrides: list[str] | None = None) -> PipelineBase | None:
    try:
        pipeline = load_pipeline(path, overrides)
    except PipelineError as exc:
        assert exc.problems and all(isinstance(p, str) and isinstance(m, str) and m for p, m in exc.problems)
        assert str(path) in str(exc) or (overrides and "--set" in str(exc))
        return None
    assert isinstance(pipeline, PipelineBase)
    return pipeline


# -- pipelines -----------------------------------------------------------------------------------

YAML_ALPHABET = st.sampled_from(list("task:cyclegan pix2pix data a b\n  -[]{},'\"#&*!|>?%@`\t\\.0123456789xyz"))
yaml_text = st.text(alphabet=YAML_ALPHABET | st.characters(codec="utf-8"), max_size=120)


@fuzz(400)
@given(text=yaml_text)
def test_random_yaml_text_gives_a_pipeline_or_a_pipeline_error(scratch, text):
    path = scratch / "random.yaml"
    path.write_text(text, encoding="utf-8")
    load_or_pipeline_error(path)


SHIPPED = {name: yaml.safe_load((ROOT / "pipelines" / f"{name}.yaml").read_text())
           for name in ("horse2zebra", "facades")}
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["cyclegan", "pix2pix", "resnet_9blocks", "unet", "patchgan", "l1", "lsgan", "hinge", "instance",
                     "batch", "bf16-mixed", "b2a", "RandomCrop", "Resize", "OneOf", "auto", "cpu", "../x", "~"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.text(max_size=6) | st.sampled_from(["name", "height", "width", "p", "transforms", "ngf"]),
                    inner, max_size=3)), max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


@st.composite
def mutated_pipelines(draw) -> dict:
    """A shipped pipeline with one to four values replaced, deleted or added anywhere in it."""
    doc = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 4))):
        where = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(where))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(values)
        else:
            parent.append(draw(values))
    return doc


@fuzz(300)
@given(doc=mutated_pipelines())
def test_mutated_pipelines_give_a_pipeline_or_a_pipeline_error(scratch, doc):
    path = scratch / "mutated.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    load_or_pipeline_error(path)


override_keys = st.lists(st.sampled_from(["data", "train", "model", "losses", "generator", "name", "ngf", "transforms",
                                          "0", "-1", "a", "RandomCrop", "height", "max_steps", ""]),
                         max_size=4).map(".".join)
override_values = st.text(max_size=10) | st.sampled_from(
    ["[1, 2]", "{a: 1}", "null", "true", "1e400", ".nan", "[", "{RandomCrop: {height: 8}}", "!!binary aGk=", "&a [*a]",
     "!!python/name:os.system", "&a [{OneOf: {transforms: *a}}]", "&a {x: *a}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["])


@fuzz(200)
@given(overrides=st.lists(st.tuples(override_keys, st.sampled_from(["=", ""]), override_values).map("".join),
                          max_size=3))
def test_random_overrides_give_a_pipeline_or_a_pipeline_error(overrides):
    load_or_pipeline_error(ROOT / "pipelines" / "horse2zebra.yaml", overrides)


# -- files ---------------------------------------------------------------------------------------

def _encoded(fmt: str, mode: str) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(arr[..., 0].astype(np.float32) / 255)
    else:
        image = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


IMAGE_SEEDS = {(".png", "RGB"): _encoded("PNG", "RGB"), (".png", "I;16"): _encoded("PNG", "I;16"),
               (".png", "P"): _encoded("PNG", "P"), (".jpg", "RGB"): _encoded("JPEG", "RGB"),
               (".tif", "F"): _encoded("TIFF", "F"), (".bmp", "RGB"): _encoded("BMP", "RGB"),
               (".webp", "RGBA"): _encoded("WEBP", "RGBA")}


def damaged(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or `seed` truncated, with bytes overwritten, or with random bytes spliced in."""

    @st.composite
    def build(draw) -> bytes:
        kind = draw(st.sampled_from(["random", "truncate", "overwrite", "splice"]))
        if kind == "random":
            return draw(st.binary(max_size=300))
        if kind == "truncate":
            return seed[: draw(st.integers(0, len(seed)))]
        data = bytearray(seed)
        if kind == "overwrite":
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            return bytes(data)
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])

    return build()


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    suffix, mode = draw(st.sampled_from(sorted(IMAGE_SEEDS)))
    return draw(st.sampled_from([suffix, ".png", ".jpg", ".tiff"])), draw(damaged(IMAGE_SEEDS[(suffix, mode)]))


@fuzz(500)
@given(file=image_files(), channels=st.sampled_from([1, 3, 4]))
def test_random_bytes_to_the_image_reader_give_an_image_or_a_clear_error(scratch, file, channels):
    suffix, data = file
    path = scratch / f"photo{suffix}"
    path.write_bytes(data)
    try:
        image = read_image(path, channels)
    except Img2ImgError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == channels
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def _tiny_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": 1, "img2img_version": "0.0.1", "pipeline": {"task": "cyclegan"}, "plugins": {},
                "nets": {"g_ab": {"w": torch.ones(2, 2)}}, "generators": {"a2b": "g_ab"}, "step": 1, "epoch": 0,
                "step_in_epoch": 1, "optimizers": {}, "rng": {}}, buf)
    return buf.getvalue()


TINY_CHECKPOINT = _tiny_checkpoint()


@fuzz(300)
@given(data=damaged(TINY_CHECKPOINT))
def test_random_bytes_to_the_checkpoint_loader_give_a_checkpoint_or_a_clear_error(scratch, data):
    path = scratch / "model.pt"
    path.write_bytes(data)
    try:
        ckpt = load_checkpoint(path, check_plugins=False)
    except Img2ImgError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(ckpt["nets"], dict) and isinstance(ckpt["step"], int)


@pytest.fixture(scope="module")
def real_state(translate_run) -> dict:
    return torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=6)
    | st.builds(torch.zeros, st.integers(0, 3), st.integers(1, 3)),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=4)
# (inside the weights?, which entry, delete?, new value): small enough to print when an example fails
damage = st.tuples(st.booleans(), st.integers(0, 10_000), st.booleans(), plain_values)


def apply_damage(state: dict, steps: list) -> dict:
    """A copy of a real checkpoint's contents with entries deleted or replaced, at the top or in the weights."""
    state = dict(state)
    state["nets"] = {k: dict(v) for k, v in state["nets"].items()}
    for inside, index, delete, value in steps:
        nets = state.get("nets")
        if inside and isinstance(nets, dict) and nets:
            target = nets[sorted(nets)[index % len(nets)]]
        else:
            target = state
        if not isinstance(target, dict) or not target:
            continue
        key = sorted(target, key=str)[index % len(target)]
        if delete:
            del target[key]
        else:
            target[key] = value
    return state


@fuzz(60)
@given(steps=st.lists(damage, min_size=1, max_size=3), use_ema=st.booleans())
def test_damaged_checkpoint_contents_give_a_generator_or_a_clear_error(scratch, real_state, steps, use_ema):
    path = scratch / "damaged.pt"
    torch.save(apply_damage(real_state, steps), path)
    try:
        loaded = load_generator(path, "a2b", use_ema=use_ema)
    except Img2ImgError as exc:
        assert str(path) in str(exc)
        return
    with torch.no_grad():
        out = loaded.module(torch.zeros(1, loaded.in_channels, 16, 16))
    assert out.shape == (1, loaded.out_channels, 16, 16)


@fuzz(100)
@given(data=st.binary(max_size=300))
def test_random_bytes_as_an_onnx_model_give_a_clear_error(scratch, data):
    from img2img.inference.translator import Translator

    path = scratch / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(Img2ImgError, match="model.onnx"):
        Translator.from_onnx(path, device="cpu")
