"""A demo pipeline (``data.synthesize``) trained on the user's own folders: they win over the demo's."""
from __future__ import annotations

from pathlib import Path

from img2img.datasets.synth import SYNTH_DATASETS
from img2img.datasets.synth_checks import DEMO_FOLDERS


def use_given_data(data) -> str | None:
    """A demo pipeline (``data.synthesize``) given the user's own training data, by ``--set`` or in a
    copied file: ``data.pairs``, or ``data.a`` and ``data.b`` that are not the demo's ``trainA`` and
    ``trainB``. Then those are used: ``data.synthesize`` (and the demo's test folders, which it would
    have made) is dropped from `data` and the note saying so is returned; otherwise None."""
    name = data.synthesize
    if not name or name not in SYNTH_DATASETS:
        return None
    demo = {key: getattr(data, key) is not None and Path(getattr(data, key)).name == want
            for key, want in DEMO_FOLDERS.items()}
    if data.pairs is not None:
        for key in DEMO_FOLDERS:
            if demo[key]:
                setattr(data, key, None)
        given = f"data.pairs ({data.pairs})"
    elif data.a is not None and data.b is not None and not demo["a"] and not demo["b"]:
        given = f"data.a and data.b ({data.a}, {data.b})"
    else:
        return None
    for key, want in (("test_a", "testA"), ("test_b", "testB")):
        folder = getattr(data, key)
        if folder is not None and Path(folder).name == want and not Path(folder).exists():
            setattr(data, key, None)  # the demo's, never made
    data.synthesize = None
    return (f"data.synthesize: {name} is not used: {given} name your own data, so the demo data set is not "
            "generated and training reads your folders")
