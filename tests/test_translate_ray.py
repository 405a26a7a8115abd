"""`img2img.inference.Translator` as Ray Data's callable class: built from a path, pickled by path,
numpy batches in and out; on a local Ray instance it matches `img2img translate` within 1/255."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from img2img.cli import app
from img2img.errors import Img2ImgError
from img2img.inference import Translator


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_translator_from_a_path_pickles_as_its_path(translate_run, translate_onnx):
    image = noise(30, 44, 0)
    for model in (translate_run, translate_onnx):
        translator = Translator(model=str(model), device="cpu", batch_size=2)
        copy = pickle.loads(pickle.dumps(translator))
        assert copy is not translator and copy.batch_size == 2
        assert np.array_equal(copy.translate(image), translator.translate(image))
    loaded = Translator.load(translate_run, device="cpu")
    assert np.array_equal(pickle.loads(pickle.dumps(loaded)).translate(image), loaded.translate(image))
    with pytest.raises(TypeError, match="model=PATH"):
        Translator()


def test_call_takes_and_gives_numpy_batches(translate_run):
    translator = Translator(model=translate_run, device="cpu", batch_size=2)
    same = np.stack([noise(32, 40, i) for i in range(3)])
    out = translator({"image": same, "id": np.arange(3)})
    assert out["translated"].shape == same.shape and out["translated"].dtype == np.uint8
    assert np.array_equal(out["id"], np.arange(3)) and out["image"] is same  # other columns pass through
    for i in range(3):
        assert np.array_equal(out["translated"][i], translator.translate(same[i]))

    mixed = np.empty(3, dtype=object)  # what Ray gives for images of different sizes
    for i, (h, w) in enumerate([(20, 30), (33, 17), (20, 30)]):
        mixed[i] = noise(h, w, i)
    out = translator({"image": mixed})["translated"]
    assert out.dtype == object and [o.shape for o in out] == [(20, 30, 3), (33, 17, 3), (20, 30, 3)]
    assert np.array_equal(out[1], translator.translate(mixed[1]))
    floats = translator({"image": same[:1].astype(np.float32) / 255})["translated"]
    assert floats.dtype == np.float32
    assert np.abs(floats[0] * 255 - translator.translate(same[0]).astype(np.float32)).max() <= 0.5 + 1e-3
    with pytest.raises(Img2ImgError, match="no 'image' column"):
        translator({"pixels": same})


def test_ray_map_batches_matches_translate(translate_run, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    folder = tmp_path / "in"
    sizes = [(32, 32), (40, 24), (32, 32), (27, 45), (32, 32)]
    for i, (h, w) in enumerate(sizes):
        (folder / ("sub" if i % 2 else "")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(h, w, i)).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    result = CliRunner().invoke(app, ["translate", str(folder), "--model", str(translate_run), "--out",
                                      str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        ds = ray.data.read_images(str(folder), include_paths=True, mode="RGB")
        ds = ds.map_batches(Translator, fn_constructor_kwargs={"model": str(translate_run), "device": "cpu"},
                            batch_format="numpy", batch_size=2, concurrency=1)
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert len(rows) == len(sizes)
    for row in rows:
        rel = Path(row["path"]).relative_to(folder)
        expected = np.asarray(Image.open(tmp_path / "out" / rel), dtype=np.int16)
        assert row["translated"].shape == expected.shape and row["translated"].dtype == np.uint8
        assert np.abs(row["translated"].astype(np.int16) - expected).max() <= 1, rel

