"""`img2img validate`'s checks of a pipeline's data section against its task (`Task.validate_data`):
paired folders or side-by-side pairs, or a folder for every domain the task loads."""
from __future__ import annotations

from typing import Any

from img2img.errors import did_you_mean


def check_data(task_cls: Any, pipeline: Any) -> list[tuple[str, str]]:
    data = pipeline.data
    if data.domains is not None and (data.a is not None or data.b is not None):
        return [("data.domains", "give the folders either in data.domains or as data.a/data.b, not both "
                                 "(data.domains: {a: ..., b: ...} is the same as data.a and data.b)")]
    if task_cls.data_kind == "paired":
        if data.domains is not None:
            if data.pairs is not None:
                return [("data.pairs", "use either data.pairs or data.domains, not both")]
            return task_cls.validate_domains(pipeline)
        if data.pairs is None and (data.a is None or data.b is None):
            return [("data", "set data.a (inputs) and data.b (targets) paired by file name, "
                             "or data.pairs (a folder of side-by-side AB images)")]
        if data.pairs is not None and (data.a is not None or data.b is not None):
            return [("data.pairs", "use either data.pairs or data.a/data.b, not both")]
        return []
    return task_cls.validate_domains(pipeline)


def check_domains(task_cls: Any, pipeline: Any) -> list[tuple[str, str]]:
    data, name = pipeline.data, task_cls.name
    need = list(task_cls.domains_for(pipeline))
    given = data.domain_folders()
    if data.domains is None and any(d not in ("a", "b") for d in need):
        listing = ", ".join(f"{d}: FOLDER" for d in need)
        return [("data.domains", f"required: the {name} task uses domains {', '.join(need)}; "
                                 f"give data.domains: {{{listing}}}")]
    problems: list[tuple[str, str]] = []
    for d in need:
        if given.get(d) is None:
            label = d.upper() if data.domains is None else d
            problems.append((data.domain_path(d), f"required: the folder of domain {label} images"))
    for d, folder in given.items():
        if d not in need and folder is not None:
            hint = did_you_mean(d, [n for n in need if n not in given])
            problems.append((data.domain_path(d), f"the {name} task uses domains {', '.join(need)}, not {d}"
                                                   + (f"; {hint}" if hint else "")))
    unknown = [(f"data.channels.{d}", d) for d in data.channels.named() if d not in need and d not in ("a", "b")]
    if data.val is not None and data.val.pairs is None:
        unknown += [(f"data.val.{d}", d) for d in data.val.folders() if d not in need]
    for where, d in unknown:
        hint = did_you_mean(d, need)
        problems.append((where, f"not a domain of this pipeline (domains: {', '.join(need)})"
                                + (f"; {hint}" if hint else "")))
    if data.pairs is not None and task_cls.data_kind != "paired":
        problems.append(("data.pairs", f"the {name} task trains on unpaired folders "
                                       + " and ".join(data.domain_path(d) for d in need)))
    return problems
