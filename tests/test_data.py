"""Image reading and writing, folder listing, pairing and the deterministic training data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2img.data import (
    TrainData,
    image_bit_depth,
    list_images,
    match_pairs,
    probe_image,
    read_image,
    save_image,
    to_image_array,
    to_tensor,
)
from img2img.errors import Img2ImgError



def rgb(h=10, w=12, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def write(path: Path, arr: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save)
    return path


# ---------------------------------------------------------------------------------------------
# reading


def make_mode(tmp_path: Path, mode: str, suffix: str) -> Path:
    base = Image.fromarray(rgb())
    path = tmp_path / f"img_{mode}{suffix}"
    if mode == "P_transparent":
        im = base.convert("P")
        im.save(path, transparency=0)
        return path
    if mode == "I;16":
        Image.fromarray((np.random.default_rng(1).random((10, 12)) * 65535).astype(np.uint16)).save(path)
        return path
    if mode == "I;16B":
        Image.fromarray((np.random.default_rng(1).random((10, 12)) * 65535).astype(">u2")).save(path)
        return path
    if mode == "I":
        Image.fromarray((np.random.default_rng(1).random((10, 12)) * 65535).astype(np.int32)).save(path)
        return path
    if mode == "F":
        Image.fromarray(np.random.default_rng(1).random((10, 12)).astype(np.float32) * 1.4 - 0.2).save(path)
        return path
    base.convert(mode).save(path)
    return path


MODES = [
    ("L", ".png"), ("LA", ".png"), ("RGB", ".png"), ("RGBA", ".png"), ("P", ".png"), ("P_transparent", ".png"),
    ("1", ".png"), ("I;16", ".png"), ("I;16", ".tif"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif"), ("CMYK", ".jpg"),
    ("CMYK", ".tif"), ("RGB", ".jpg"), ("RGB", ".webp"), ("RGBA", ".webp"), ("RGB", ".bmp"), ("RGB", ".tiff"),
    ("L", ".jpeg"),
]


@pytest.mark.parametrize("mode, suffix", MODES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_mode_and_format_reads_to_the_asked_channels(tmp_path, mode, suffix, channels):
    path = make_mode(tmp_path, mode, suffix)
    arr = read_image(path, channels)
    assert arr.shape == (10, 12, channels) and arr.dtype == np.float32
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    assert arr.max() > 0.0  # not an all-black misread


def test_channel_conversions(tmp_path):
    colour = rgb()
    path = write(tmp_path / "c.png", colour)
    as3 = read_image(path, 3)
    np.testing.assert_allclose(as3, colour / 255.0, atol=1e-6)
    as1 = read_image(path, 1)[..., 0]
    luma = (colour / 255.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(as1, luma, atol=1e-5)
    as4 = read_image(path, 4)
    np.testing.assert_array_equal(as4[..., 3], 1.0)
    grey = write(tmp_path / "g.png", colour[..., 0])
    g3 = read_image(grey, 3)
    np.testing.assert_array_equal(g3[..., 0], g3[..., 2])
    rgba = np.dstack([colour, np.full(colour.shape[:2], 51, np.uint8)])
    alpha = write(tmp_path / "a.png", rgba)
    np.testing.assert_allclose(read_image(alpha, 4)[..., 3], 0.2, atol=1e-6)
    np.testing.assert_allclose(read_image(alpha, 3), colour / 255.0, atol=1e-6)  # alpha dropped


def test_palette_transparency_becomes_alpha(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 1), 1)
    path = tmp_path / "p.png"
    im.save(path, transparency=0)
    arr = read_image(path, 4)
    assert arr[0, 0, 3] == 0.0 and arr[1, 1, 3] == 1.0
    np.testing.assert_array_equal(arr[1, 1, :3], [0.0, 0.0, 1.0])


def test_sixteen_bit_grey_keeps_precision(tmp_path):
    values = np.arange(0, 65536, 257, dtype=np.uint16)[:240].reshape(12, 20) + 7  # not multiples of 257
    for suffix in (".png", ".tif"):
        path = tmp_path / f"g16{suffix}"
        Image.fromarray(values).save(path)
        assert image_bit_depth(path) == 16
        arr = read_image(path, 1)[..., 0]
        np.testing.assert_allclose(arr * 65535.0, values, atol=0.01)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_save_and_read_round_trip(tmp_path, suffix, channels):
    arr = np.random.default_rng(2).random((9, 11, channels)).astype(np.float32)
    path = tmp_path / "deep" / f"x{suffix}"
    save_image(path, arr, bit_depth=16)
    assert image_bit_depth(path) == 16
    back = read_image(path, channels)
    assert np.abs(back - arr).max() < 1.0 / 65535  # 8 bits would be off by up to 1/510


def test_float_and_int32_images(tmp_path):
    f = tmp_path / "f.tif"
    Image.fromarray(np.array([[-0.5, 0.25], [0.75, 3.0]], dtype=np.float32)).save(f)
    np.testing.assert_allclose(read_image(f, 1)[..., 0], [[0.0, 0.25], [0.75, 1.0]])
    assert image_bit_depth(f) == 32
    i = tmp_path / "i.tif"
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(i)
    np.testing.assert_allclose(read_image(i, 1)[..., 0], [[0.0, 1.0]])


def test_exif_orientation_is_applied(tmp_path):
    arr = rgb(20, 30)
    arr[:4, :4] = 255  # a white top-left corner
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "o.jpg"
    im.save(path, exif=exif.tobytes(), quality=100)
    assert probe_image(path) == (20, 30)  # (width, height) as displayed
    out = read_image(path, 3)
    assert out.shape == (30, 20, 3)
    assert out[:3, -3:].mean() > 0.9  # the corner moved to the top right


@pytest.mark.parametrize("kind", ["zero", "truncated_png", "truncated_jpg", "text_as_png", "missing", "folder"])
def test_unreadable_files_name_the_file(tmp_path, kind):
    good_png = write(tmp_path / "good.png", rgb(64, 64))
    good_jpg = write(tmp_path / "good.jpg", rgb(64, 64))
    path = tmp_path / f"bad_{kind}.png"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated_png":
        path.write_bytes(good_png.read_bytes()[:200])
    elif kind == "truncated_jpg":
        path = tmp_path / "bad.jpg"
        data = good_jpg.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text_as_png":
        path.write_text("not an image at all")
    elif kind == "folder":
        path.mkdir()
    for reader in (lambda p: read_image(p, 3), probe_image):
        with pytest.raises(Img2ImgError) as info:
            reader(path)
        assert str(path) in str(info.value)
    expected = {"zero": "empty", "truncated_png": "truncated", "truncated_jpg": "truncated",
                "text_as_png": "not an image", "missing": "not found", "folder": "folder"}[kind]
    assert expected in str(info.value)


def test_decompression_bomb_limit_is_honoured_and_explained(tmp_path, monkeypatch):
    path = write(tmp_path / "big.png", rgb(30, 30))  # 900 pixels
    monkeypatch.setenv("IMG2IMG_MAX_IMAGE_PIXELS", "600")  # between the limit and twice it
    with pytest.raises(Img2ImgError) as info:
        read_image(path, 3)
    message = str(info.value)
    assert str(path) in message and "900" in message and "600" in message
    assert "IMG2IMG_MAX_IMAGE_PIXELS" in message
    monkeypatch.setenv("IMG2IMG_MAX_IMAGE_PIXELS", "100")  # Pillow's own error, above twice the limit
    with pytest.raises(Img2ImgError, match="IMG2IMG_MAX_IMAGE_PIXELS"):
        probe_image(path)
    monkeypatch.setenv("IMG2IMG_MAX_IMAGE_PIXELS", "1000")
    assert read_image(path, 3).shape == (30, 30, 3)
    monkeypatch.setenv("IMG2IMG_MAX_IMAGE_PIXELS", "0")
    assert probe_image(path) == (30, 30)


# ---------------------------------------------------------------------------------------------
# writing and tensors


def test_save_image_formats(tmp_path):
    arr = np.random.default_rng(3).random((8, 10, 4)).astype(np.float32)
    for suffix in (".png", ".webp", ".tif"):
        save_image(tmp_path / f"o{suffix}", arr)
        assert read_image(tmp_path / f"o{suffix}", 4).shape == (8, 10, 4)
        assert Image.open(tmp_path / f"o{suffix}").mode == "RGBA"
    for suffix in (".jpg", ".bmp"):
        save_image(tmp_path / "sub" / f"o{suffix}", arr)  # creates the folder, drops alpha
        assert Image.open(tmp_path / "sub" / f"o{suffix}").mode == "RGB"
    save_image(tmp_path / "grey.png", arr[..., :1])
    assert Image.open(tmp_path / "grey.png").mode == "L"
    png = read_image(tmp_path / "o.png", 4)
    assert np.abs(png - arr).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(Img2ImgError, match="gif"):
        save_image(tmp_path / "o.gif", arr)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_tensor_conversion_round_trip():
    arr = np.random.default_rng(4).random((5, 7, 3)).astype(np.float32)
    t = to_tensor(arr)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_allclose(to_image_array(t), arr, atol=1e-6)
    np.testing.assert_allclose(to_image_array(torch.full((1, 2, 2), 3.0)), 1.0)  # clipped
    assert to_image_array(t[None]).shape == (5, 7, 3)


# ---------------------------------------------------------------------------------------------
# folders and pairs


def test_list_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    for rel in ["b.png", "a/z.JPG", "a/b.webp", "c.tiff", ".hidden.png", ".cache/x.png", "notes.txt", "a/y.gif"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/b.webp", "a/z.JPG", "b.png", "c.tiff"]


def test_list_images_errors_name_the_folder_and_yaml_path(tmp_path):
    with pytest.raises(Img2ImgError) as info:
        list_images(tmp_path / "nope", "data.a")
    assert "data.a" in str(info.value) and "nope" in str(info.value) and "does not exist" in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(Img2ImgError, match="contains no images"):
        list_images(tmp_path / "empty", "data.b")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(Img2ImgError, match="not a folder"):
        list_images(tmp_path / "file.png")


def test_pairs_match_by_relative_path_then_stem(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    for rel in ["x/1.png", "2.png", "deep/3.png"]:
        write(a / rel, rgb())
    for rel in ["x/1.jpg", "2.png", "other/3.png"]:
        write(b / rel, rgb())
    pairs = match_pairs(list_images(a), a, list_images(b), b)
    got = [(pa.relative_to(a).as_posix(), pb.relative_to(b).as_posix()) for pa, pb in pairs]
    assert got == [("2.png", "2.png"), ("deep/3.png", "other/3.png"), ("x/1.png", "x/1.jpg")]


def test_unmatched_files_are_listed_in_one_error(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    for i in range(14):
        write(a / f"{i:02d}.png", rgb())
    write(b / "00.png", rgb())
    write(b / "extra.png", rgb())
    with pytest.raises(Img2ImgError) as info:
        TrainData(kind="paired", a=a, b=b)
    message = str(info.value)
    assert "13 file(s) in data.a" in message and "1 file(s) in data.b" in message
    assert "extra.png" in message and "10.png" in message and "... and 3 more" in message
    assert "11.png" not in message  # at most 10 shown per side


def make_folder(folder: Path, n: int, h: int, w: int, seed: int, suffix=".png") -> list[Path]:
    return [write(folder / f"{i:03d}{suffix}", rgb(h, w, seed * 1000 + i)) for i in range(n)]


def test_side_by_side_pairs_are_split_and_direction_swaps(tmp_path):
    left = np.zeros((16, 16, 3), np.uint8)
    right = np.full((16, 16, 3), 255, np.uint8)
    write(tmp_path / "ab" / "0.png", np.concatenate([left, right], axis=1))
    write(tmp_path / "ab" / "1.png", np.concatenate([left, right], axis=1))
    data = TrainData(kind="paired", a=None, b=None, pairs=tmp_path / "ab", channels_b=1)
    batch = data.fixed_batch(2)
    assert batch["a"].shape == (2, 3, 16, 16) and batch["b"].shape == (2, 1, 16, 16)
    assert torch.all(batch["a"] == -1) and torch.all(batch["b"] == 1)
    swapped = TrainData(kind="paired", a=None, b=None, pairs=tmp_path / "ab", channels_b=1, direction="b2a")
    batch = swapped.fixed_batch(2)
    assert batch["a"].shape == (2, 1, 16, 16) and torch.all(batch["a"] == 1) and torch.all(batch["b"] == -1)


# ---------------------------------------------------------------------------------------------
# training data


CROP_FLIP = [{"RandomCrop": {"height": 16, "width": 16}}, {"HorizontalFlip": {"p": 0.5}}]


@pytest.fixture()
def unpaired(tmp_path):
    make_folder(tmp_path / "A", 7, 20, 24, 1)
    make_folder(tmp_path / "B", 5, 22, 20, 2)
    return tmp_path / "A", tmp_path / "B"


def batches(data: TrainData, epoch: int, start: int = 0) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in b.items()} for b in data.epoch(epoch, start)]


def same(x: list[dict], y: list[dict]) -> bool:
    return len(x) == len(y) and all(torch.equal(p[k], q[k]) for p, q in zip(x, y) for k in ("a", "b"))


def test_unpaired_epochs_are_deterministic_and_resumable(unpaired):
    a, b = unpaired
    data = TrainData(kind="unpaired", a=a, b=b, transforms=CROP_FLIP, batch_size=2, seed=5)
    assert data.check() == []
    assert data.num_items == 7 and data.steps_per_epoch == 3
    first = batches(data, 0)
    assert len(first) == 3 and first[0]["a"].shape == (2, 3, 16, 16) and first[0]["b"].shape == (2, 3, 16, 16)
    assert same(first, batches(data, 0))
    assert not same(first, batches(data, 1))
    assert same(batches(data, 0, start=2), first[2:])
    assert batches(data, 0, start=3) == []
    again = TrainData(kind="unpaired", a=a, b=b, transforms=CROP_FLIP, batch_size=2, seed=5)
    assert same(batches(again, 0), first)
    other_seed = TrainData(kind="unpaired", a=a, b=b, transforms=CROP_FLIP, batch_size=2, seed=6)
    assert not same(batches(other_seed, 0), first)


def test_worker_count_does_not_change_the_samples(unpaired):
    a, b = unpaired
    serial = TrainData(kind="unpaired", a=a, b=b, transforms=CROP_FLIP, batch_size=2, seed=3)
    parallel = TrainData(kind="unpaired", a=a, b=b, transforms=CROP_FLIP, batch_size=2, seed=3, num_workers=2)
    assert same(batches(serial, 0), batches(parallel, 0))
    assert same(batches(serial, 1), batches(parallel, 1))  # persistent workers see the new epoch
    assert same(batches(serial, 1, start=1), batches(parallel, 1, start=1))


def test_ranks_share_an_epoch_without_overlap(unpaired):
    a, b = unpaired
    shards = [TrainData(kind="unpaired", a=a, b=b, batch_size=1, rank=r, world_size=2, seed=1) for r in range(2)]
    positions = [s._sampler.positions(0).tolist() for s in shards]
    assert len(positions[0]) == len(positions[1]) == 4  # 7 items padded to 8
    assert sorted(set(positions[0]) | set(positions[1])) == list(range(7))
    assert shards[0].steps_per_epoch == 4


def test_paired_crops_and_flips_match_while_input_transforms_touch_only_the_input(tmp_path):
    files = make_folder(tmp_path / "A", 4, 24, 28, 1)
    for f in files:
        write(tmp_path / "B" / f.name, np.asarray(Image.open(f)))  # target == input
    data = TrainData(kind="paired", a=tmp_path / "A", b=tmp_path / "B", transforms=CROP_FLIP, batch_size=4, seed=0)
    for epoch in range(3):
        (batch,) = batches(data, epoch)
        assert batch["a"].shape == (4, 3, 16, 16)
        assert torch.equal(batch["a"], batch["b"])
    noisy = TrainData(kind="paired", a=tmp_path / "A", b=tmp_path / "B", transforms=CROP_FLIP, batch_size=4,
                      input_transforms=[{"InvertImg": {"p": 1.0}}], seed=0)
    (batch,) = batches(noisy, 0)
    (plain,) = batches(data, 0)
    assert torch.equal(batch["b"], plain["b"])  # target untouched, same crop as without input_transforms
    torch.testing.assert_close(batch["a"], -plain["a"], atol=1e-5, rtol=0)


def test_crop_larger_than_an_image_names_the_file(tmp_path):
    make_folder(tmp_path / "A", 3, 32, 32, 1)
    small = write(tmp_path / "A" / "tiny.png", rgb(10, 40))
    make_folder(tmp_path / "B", 3, 32, 32, 2)
    data = TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B",
                     transforms=[{"RandomCrop": {"height": 16, "width": 16}}])
    with pytest.raises(Img2ImgError) as info:
        data.check()
    message = str(info.value)
    assert str(small) in message and "40x10" in message and "16x16" in message and "Resize" in message


def test_check_lists_every_unreadable_file_or_skips_them(tmp_path):
    make_folder(tmp_path / "A", 4, 16, 16, 1)
    make_folder(tmp_path / "B", 4, 16, 16, 2)
    (tmp_path / "A" / "broken.png").write_bytes(b"")
    (tmp_path / "B" / "fake.jpg").write_text("hello")
    data = TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B")
    with pytest.raises(Img2ImgError) as info:
        data.check()
    message = str(info.value)
    assert "2 image file(s)" in message and "broken.png" in message and "fake.jpg" in message
    assert "data.skip_unreadable" in message
    skipping = TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B", skip_unreadable=True)
    skipped = skipping.check()
    assert sorted(p.name for p, _ in skipped) == ["broken.png", "fake.jpg"]
    assert skipping.num_items == 4 and len(batches(skipping, 0)) == 4


def test_paired_images_of_different_sizes_are_reported(tmp_path):
    write(tmp_path / "A" / "0.png", rgb(16, 16))
    write(tmp_path / "B" / "0.png", rgb(20, 16))
    data = TrainData(kind="paired", a=tmp_path / "A", b=tmp_path / "B")
    with pytest.raises(Img2ImgError, match="same size"):
        data.check()


def test_batch_of_different_sizes_asks_for_a_resize(tmp_path):
    write(tmp_path / "A" / "0.png", rgb(16, 16))
    write(tmp_path / "A" / "1.png", rgb(20, 16))
    make_folder(tmp_path / "B", 2, 16, 16, 2)
    data = TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B", batch_size=2, num_workers=1)
    with pytest.raises(Img2ImgError) as info:
        batches(data, 0)
    assert "Resize" in str(info.value) and "0.png" in str(info.value) and "Traceback" not in str(info.value)
    fixed = TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B", batch_size=2,
                      transforms=[{"Resize": {"height": 8, "width": 8}}])
    assert batches(fixed, 0)[0]["a"].shape == (2, 3, 8, 8)


def test_batch_size_larger_than_the_data(tmp_path):
    make_folder(tmp_path / "A", 2, 8, 8, 1)
    make_folder(tmp_path / "B", 2, 8, 8, 2)
    with pytest.raises(Img2ImgError, match="train.batch_size is 4"):
        TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B", batch_size=4)


def test_fixed_batch_is_stable(unpaired):
    a, b = unpaired
    data = TrainData(kind="unpaired", a=a, b=b, transforms=CROP_FLIP, seed=9)
    first = data.fixed_batch(3)
    assert first["a"].shape == (3, 3, 16, 16)
    batches(data, 0)
    assert torch.equal(data.fixed_batch(3)["a"], first["a"]) and torch.equal(data.fixed_batch(3)["b"], first["b"])
    assert data.fixed_batch(50)["a"].shape[0] == 7
    record = data.describe_transforms()
    assert record["transforms"]["transform"]["transforms"][0]["__class_fullname__"] == "RandomCrop"


def test_unreadable_file_during_training_names_it(tmp_path):
    make_folder(tmp_path / "A", 2, 8, 8, 1)
    make_folder(tmp_path / "B", 2, 8, 8, 2)
    (tmp_path / "A" / "001.png").write_text("oops")
    data = TrainData(kind="unpaired", a=tmp_path / "A", b=tmp_path / "B", num_workers=1)
    with pytest.raises(Img2ImgError, match="001.png"):
        batches(data, 0)


def test_input_transforms_may_not_crop_beyond_the_joint_output(tmp_path):
    make_folder(tmp_path / "A", 2, 20, 20, 1)
    make_folder(tmp_path / "B", 2, 20, 20, 2)
    data = TrainData(kind="paired", a=tmp_path / "A", b=tmp_path / "B",
                     transforms=[{"Resize": {"height": 12, "width": 12}}],
                     input_transforms=[{"RandomCrop": {"height": 16, "width": 16}}])
    with pytest.raises(Img2ImgError, match="data.input_transforms crops 16x16"):
        data.check()
