"""A pipeline's ``data.synthesize`` checked against the synthetic dataset it names: the dataset exists,
is the kind of data the task trains on, and the data paths are the folders it is written as."""
from __future__ import annotations

from pathlib import Path

from img2img.datasets.synth import SYNTH_DATASETS, SYNTH_DOMAINS, SYNTH_KINDS, _suggest


def synthesize_problems(data, data_kind: str, task: str) -> list[tuple[str, str]]:
    """What is wrong with ``data.synthesize`` in a pipeline's `data` section for a task whose data is
    `data_kind` ("paired" or "unpaired"): an unknown name, the other kind of data, or data paths
    that are not where the dataset is written (``ROOT/trainA``, ``ROOT/trainB``)."""
    name = data.synthesize
    if not name:
        return []
    if name not in SYNTH_DATASETS:
        kinds = ", ".join(f"{n} ({SYNTH_KINDS[n]})" for n in SYNTH_DATASETS)
        return [("data.synthesize", f"unknown synthetic dataset '{name}'{_suggest(name, SYNTH_DATASETS)}; "
                                    f"available: {kinds}")]
    if SYNTH_KINDS[name] != data_kind:
        fits = [n for n, k in SYNTH_KINDS.items() if k == data_kind]
        return [("data.synthesize", f"'{name}' is {SYNTH_KINDS[name]} data, but the {task} task trains on "
                                    f"{data_kind} data; use {' or '.join(fits) or 'no synthetic dataset'}")]
    if data.pairs is not None:
        return [("data.synthesize", f"'{name}' is written as trainA/trainB folders, not side-by-side pairs; "
                                    "use data.a and data.b instead of data.pairs")]
    if data.folder("a") is None:
        return [(data.domain_path("a"), f"required with data.synthesize: the folder trainA of the '{name}' dataset, "
                                        "or --set data.synthesize=null to train on folders you give")]
    letters = SYNTH_DOMAINS[name]
    given = {key: folder for key, folder in data.domain_folders().items() if folder is not None}
    own = [key for key, folder in given.items()
           if len(key) == 1 and key.upper() in letters and Path(folder).name != f"train{key.upper()}"]
    if own and len(own) < len(given):  # some folders of the user's, some of the demo's
        key = next(k for k in given if k not in own)
        path, mine = data.domain_path(key), data.domain_path(own[0])
        return [(path, f"{given[key]} is the demo's folder (data.synthesize: {name}), while {mine} is your own "
                       f"{given[own[0]]}; give {path} too (--set {path}=DIR), or --set data.synthesize=null to "
                       "train on the folders you give")]
    root = Path(data.folder("a")).parent
    names = [f"{split}{x}" for split in ("train", "test") for x in letters]
    folders = ", ".join(names[:-1]) + " and " + names[-1]
    problems = []
    for key, folder in given.items():
        if key.upper() not in letters or len(key) != 1:
            problems.append((data.domain_path(key), f"the '{name}' dataset has the domains "
                                                    f"{', '.join(letters.lower())} only"))
        elif Path(folder) != root / f"train{key.upper()}":
            problems.append((data.domain_path(key), f"data.synthesize writes the '{name}' dataset as {root}/"
                                                    f"{folders}; point {data.domain_path(key)} at "
                                                    f"{root / ('train' + key.upper())}, or --set "
                                                    "data.synthesize=null to train on the folders you give"))
    return problems


DEMO_FOLDERS = {"a": "trainA", "b": "trainB"}
"""The folders `data.synthesize` writes for a two-domain demo, by data key."""
