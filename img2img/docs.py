"""The user documentation (``docs/*.md``), shipped with img2img so that ``img2img docs NAME`` shows it
where there is no checkout: a wheel installs the files under ``<prefix>/share/img2img/docs``."""
from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

from img2img.errors import Img2ImgError, did_you_mean


def docs_folder() -> Path | None:
    """The folder holding the documentation: the checkout's ``docs/`` (an editable install), or the
    one a wheel installed into its prefix (a virtual environment, the system, ``pip --user``)."""
    checkout = Path(__file__).resolve().parent.parent / "docs"
    candidates = [checkout, Path(sysconfig.get_path("data")) / "share" / "img2img" / "docs",
                  Path(sys.prefix) / "share" / "img2img" / "docs",
                  Path(site.getuserbase()) / "share" / "img2img" / "docs"]
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.md"))), None)


def doc_names() -> dict[str, str]:
    """Each document's name (its file name without ``.md``) and its title (the first heading)."""
    folder = docs_folder()
    if folder is None:
        return {}
    found = {}
    for path in sorted(folder.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        found[path.stem] = next((line.lstrip("#").strip() for line in lines if line.startswith("#")), path.stem)
    return found


def read_doc(name: str) -> str:
    """The markdown text of document `name` (``import``, ``import.md`` and ``docs/import.md`` alike)."""
    stem = Path(name).name.removesuffix(".md")
    names = doc_names()
    if not names:
        raise Img2ImgError("the documentation is not installed with this img2img (no docs folder next to the "
                           "package or under <prefix>/share/img2img/docs); reinstall it from its wheel")
    if stem not in names:
        hint = did_you_mean(stem, list(names))
        raise Img2ImgError(f"no document named '{name}'{'; ' + hint if hint else ''}; the documents are: "
                           f"{', '.join(names)} (see `img2img docs`)")
    return (docs_folder() / f"{stem}.md").read_text(encoding="utf-8")
