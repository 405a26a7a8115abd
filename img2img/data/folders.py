"""Image folders: listing the images under a folder, and pairing two folders by file name."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from img2img.data.images import IMAGE_EXTENSIONS, _extensions_text
from img2img.errors import Img2ImgError


def data_folders(data, prefix: str = "data") -> list[tuple[str, Path]]:
    """Every folder a pipeline's ``data`` section reads, with its dotted path (``data.val.a`` too)."""
    found: list[tuple[str, Path]] = []
    fields = {name: getattr(data, name) for name in type(data).model_fields}
    fields.update(getattr(data, "__pydantic_extra__", None) or {})  # data.val.<domain>
    for name, value in fields.items():
        if isinstance(value, Path):
            found.append((f"{prefix}.{name}", value))
        elif isinstance(value, dict):  # data.domains, data.test
            found += [(f"{prefix}.{name}.{k}", v) for k, v in value.items() if isinstance(v, Path)]
        elif hasattr(type(value), "model_fields"):
            found += data_folders(value, f"{prefix}.{name}")
    return found


def list_images(folder: Path, yaml_path: str | None = None) -> list[Path]:
    """Every image under ``folder`` (recursive, hidden files skipped), sorted by relative path."""
    folder = Path(folder)
    where = f"{yaml_path}: " if yaml_path else ""
    fix = f"Point {yaml_path} at a folder of images" if yaml_path else "Pass a folder of images"
    fix += f" ({_extensions_text()})."
    if not folder.exists():
        from img2img.datasets.synth import download_hint

        command = download_hint(folder)
        if command is not None:
            fix += f" This is where the public dataset goes: `{command}` downloads it."
        raise Img2ImgError(f"{where}the folder '{folder}' does not exist. {fix}")
    if not folder.is_dir():
        raise Img2ImgError(f"{where}'{folder}' is a file, not a folder. {fix}")
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a symlink loop
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(root) / name
            found.append((path.relative_to(folder).as_posix(), path))
    if not found:
        raise Img2ImgError(f"{where}the folder '{folder}' contains no images. {fix}")
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def match_pairs(
    files_a: Sequence[Path], root_a: Path, files_b: Sequence[Path], root_b: Path,
    yaml_paths: tuple[str, str] = ("data.a", "data.b"),
) -> list[tuple[Path, Path]]:
    """Pair files of two folders by relative path without extension, falling back to the file stem.

    Raises one Img2ImgError listing every file left without a partner (and any ambiguous name).
    """

    def keyed(files: Sequence[Path], root: Path) -> tuple[dict[str, Path], list[str]]:
        table: dict[str, Path] = {}
        clashes: list[str] = []
        for f in files:
            key = f.relative_to(root).with_suffix("").as_posix()
            if key in table:
                clashes.append(f"{table[key]} and {f}")
            table[key] = f
        return table, clashes

    table_a, clash_a = keyed(files_a, Path(root_a))
    table_b, clash_b = keyed(files_b, Path(root_b))
    if clash_a or clash_b:
        shown = (clash_a + clash_b)[:10]
        raise Img2ImgError(
            "paired data needs one file per name, but these differ only by extension:\n  "
            + "\n  ".join(shown)
            + "\nRename or remove one of each."
        )
    pairs = {k: (table_a[k], table_b[k]) for k in table_a.keys() & table_b.keys()}
    rest_a = {k: p for k, p in table_a.items() if k not in pairs}
    rest_b = {k: p for k, p in table_b.items() if k not in pairs}
    # fallback: the same file stem in different sub-folders, when that stem is unique on both sides
    stems_a: dict[str, list[str]] = {}
    stems_b: dict[str, list[str]] = {}
    for k, p in rest_a.items():
        stems_a.setdefault(p.stem, []).append(k)
    for k, p in rest_b.items():
        stems_b.setdefault(p.stem, []).append(k)
    for stem, keys_a in stems_a.items():
        keys_b = stems_b.get(stem, [])
        if len(keys_a) == 1 and len(keys_b) == 1:
            pairs[keys_a[0]] = (rest_a.pop(keys_a[0]), rest_b.pop(keys_b[0]))
    if rest_a or rest_b:
        lines = [
            f"paired data needs a file in {yaml_paths[1]} ({root_b}) for every file in {yaml_paths[0]} "
            f"({root_a}), matched by name (the extension may differ)."
        ]
        for label, rest, other in ((yaml_paths[0], rest_a, yaml_paths[1]), (yaml_paths[1], rest_b, yaml_paths[0])):
            if rest:
                names = sorted(rest)
                lines.append(f"{len(names)} file(s) in {label} have no partner in {other}:")
                lines += [f"  {rest[n]}" for n in names[:10]]
                if len(names) > 10:
                    lines.append(f"  ... and {len(names) - 10} more")
        lines.append("Rename or remove these files, or train an unpaired task (cyclegan) instead.")
        raise Img2ImgError("\n".join(lines))
    return [pairs[k] for k in sorted(pairs)]


