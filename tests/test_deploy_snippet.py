"""The onnxruntime snippet in docs/deploy.md runs without img2img or torch and matches `img2img translate`."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "deploy.md"
README = ROOT / "README.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def deploy_snippet() -> str:
    blocks = python_blocks(DEPLOY.read_text())
    assert blocks, f"{DEPLOY} has no ```python block"
    return blocks[0]


def blocked_imports(folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` and `import img2img` fail."""
    (folder / "img2img").mkdir(parents=True)
    message = "raise ImportError('{} is not available to the deployment snippet')\n"
    (folder / "torch.py").write_text(message.format("torch"))
    (folder / "img2img" / "__init__.py").write_text(message.format("img2img"))
    return folder


def test_snippet_is_short_and_imports_neither_img2img_nor_torch():
    code = deploy_snippet()
    assert len(code.strip().splitlines()) <= 20
    assert not re.search(r"^\s*(import|from)\s+(torch|img2img)\b", code, flags=re.M)


def test_snippet_translates_like_img2img(translate_onnx, tmp_path):
    from img2img.inference.translator import Translator

    source = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)).save(source)
    script = tmp_path / "translate_one.py"
    script.write_text(deploy_snippet())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocked_imports(tmp_path / "blocked")), env.get("PYTHONPATH", "")])
    target = tmp_path / "snippet.png"
    result = subprocess.run([sys.executable, str(script), str(translate_onnx), str(source), str(target)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # the blocker works: the same interpreter and environment cannot import torch
    probe = subprocess.run([sys.executable, "-c", "import torch"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0 and "not available" in probe.stderr

    report = Translator.from_onnx(translate_onnx, device="cpu").translate_files(
        [source], tmp_path / "cli", console=__import__("rich.console").console.Console(file=open(os.devnull, "w")))
    ours = np.asarray(Image.open(report.written[0]), dtype=np.int16)
    theirs = np.asarray(Image.open(target), dtype=np.int16)
    assert theirs.shape == ours.shape == (45, 67, 3)
    assert np.abs(theirs - ours).max() <= 2


def test_readme_deploy_section_shows_the_same_snippet():
    text = README.read_text() if README.is_file() else ""
    match = re.search(r"^#+\s*Deploy[^\n]*\n(.*?)(?=^#{1,2}\s|\Z)", text, flags=re.M | re.S)
    if match is None:
        pytest.skip("README.md has no Deploy section yet; docs/deploy.md holds the snippet")
    blocks = python_blocks(match.group(1))
    if not blocks:
        pytest.skip("README.md's Deploy section has no ```python block yet; paste docs/deploy.md's snippet")
    assert blocks[0] == deploy_snippet(), "README.md's Deploy snippet differs from docs/deploy.md's"
