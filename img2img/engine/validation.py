"""Validation during training: translate `data.val`, score it, keep `checkpoints/best.pt`.

The task says what it can score (`Task.val_metrics`) and computes its own scores
(`Task.validation_scores`: l1/psnr/ssim for paired tasks, cycle_l1 for CycleGAN). kid and fid are
the engine's, for any task with an a2b translator: `data.val.a` translated a2b, rounded to 8 bits
as translate would save it, against `data.val.b` (or `data.b` when `val.b` is absent), each image
handed to the extractor by `train.val_protocol` (default: the extractor's own), features on the
training device in batches (img2img/evaluation/distribution.py). A task of more than two domains
is scored in each of its `val_directions` (``data.val.<from>`` against ``data.val.<to>``, else the
training folder of ``<to>``): ``val_kid_<direction>`` each, ``val_kid`` their mean. The reference
features are computed once, when the validator is created. Every kid/fid row carries ``val_setup``
(extractor, weights digest, protocol, image counts), so a run whose rows mix setups shows it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from img2img.engine import checkpoint as ckpt_io
from img2img.errors import Img2ImgError
from img2img.inference.padding import SizeAdapter
from img2img.tasks.validation import DISTRIBUTION_METRICS, ValImages, effective_metric, extractor_ref

BATCH = 16


def run_generator(gen: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Translate at the input's own size: pad to the generator's multiple, crop back."""
    return SizeAdapter(gen, int(getattr(gen, "size_multiple", 1)))(x)


def check_ready(pipeline, source: str | None = None) -> None:
    """Raise a `PipelineError` for what would stop a training here: ``data.synthesize`` that would not make
    the data the pipeline reads, and the task's `validate_setup` (validation extractor, weights)."""
    from img2img.datasets.synth_checks import synthesize_problems
    from img2img.registry import get_registry

    task_cls = get_registry().get("task", pipeline.task).factory
    problems = synthesize_problems(pipeline.data, task_cls.data_kind, pipeline.task)
    problems += list(task_cls.validate_setup(pipeline)) if hasattr(task_cls, "validate_setup") else []
    if problems:
        from img2img.config.pipeline import pipeline_error

        raise pipeline_error(pipeline, problems, source)


def data_notes(pipeline) -> list[str]:
    """What `img2img train` would find wrong with the folders it reads (missing, empty, a file), each
    naming its key; nothing for folders ``data.synthesize`` makes on first use. (``test_*`` are read by
    `img2img evaluate --data` only.)"""
    from img2img.data.folders import data_folders, list_images

    if pipeline.data.synthesize:
        return []
    notes = []
    for key, folder in data_folders(pipeline.data):
        if key.startswith(("data.test_", "data.test.")):
            continue
        try:
            list_images(folder, key)
        except Img2ImgError as exc:
            notes.append(str(exc))
    return notes


def describe(pipeline) -> str | None:
    """``kid (random_conv)``: the metric that picks best.pt and its extractor, or None without data.val."""
    from img2img.registry import get_registry

    if pipeline.data.val is None:
        return None
    task_cls = get_registry().get("task", pipeline.task).factory
    metric = effective_metric(task_cls, pipeline)
    if metric in DISTRIBUTION_METRICS:
        protocol = getattr(pipeline.train, "val_protocol", None)
        return f"{metric} ({extractor_ref(task_cls, pipeline, metric)['name']}{f', {protocol}' if protocol else ''})"
    return metric


@dataclass
class Validator:
    trainer: Any
    metric: str
    every: int
    images: ValImages
    higher: bool = False
    extractor_name: str | None = None
    extractor: nn.Module | None = None
    reference: np.ndarray | None = None
    protocol: str | None = None
    setup: dict[str, Any] | None = None  # extractor, weights digest, protocol, counts: in every kid/fid row

    @property
    def weights(self) -> str | None:
        return self.setup["weights"] if self.setup else None
    directions: tuple[str, ...] = ("a2b",)
    references: dict[str, np.ndarray] | None = None  # per direction, when scored in several

    @classmethod
    def create(cls, trainer) -> Validator | None:
        p = trainer.pipeline
        task_cls = type(trainer.task)
        check_ready(p, "the pipeline (train.* / data.val)")
        if p.data.val is None:
            return None
        if p.train.val_every is None:
            if "val_every" in p.train.model_fields_set:  # `val_every: null` given: off, not the default
                trainer.console.print("validation: off (train.val_every is null; give a number of steps, e.g. "
                                      "--set train.val_every=1000, to validate on data.val)",
                                      highlight=False, markup=False)
                return None
            p.train.val_every = p.train.checkpoint_every  # the resolved pipeline says how often
        metric = effective_metric(task_cls, p)
        if p.train.val_metric is None:
            p.train.val_metric = metric  # the resolved pipeline (pipeline.yaml, checkpoints) says which
        v = cls(trainer=trainer, metric=metric, every=p.train.val_every,
                images=load_val_images(p, task_cls.data_kind == "paired"),
                higher=metric in task_cls.val_higher_is_better, directions=tuple(task_cls.val_directions(p)))
        if metric in DISTRIBUTION_METRICS and v.directions != ("a2b",):
            v._prepare_directions(task_cls)
        elif metric in DISTRIBUTION_METRICS:
            v._prepare_distribution(task_cls)
        else:
            if p.data.val.pairs is not None:
                what = f"{len(v.images.a)} data.val.pairs images"
            else:
                what = f"{len(v.images.a)} data.val.a images" + (f" and {len(v.images.b)} of data.val.b"
                                                                 if v.images.b else "")
            trainer.console.print(f"validation: {metric} of {what}, every "
                                  f"{v.every} steps; best.pt keeps the {'highest' if v.higher else 'lowest'}",
                                  highlight=False, markup=False)
        best = trainer.best
        if best is not None and (best.get("metric") != metric or best.get("extractor") != v.extractor_name
                                 or best.get("protocol", v.protocol) != v.protocol
                                 or best.get("weights", v.weights) != v.weights
                                 or not math.isfinite(best.get("value", math.nan))):
            trainer.console.print(f"note: validation now picks best.pt by {describe(p)} (was {best.get('metric')}); "
                                  "the next validation replaces best.pt", highlight=False, markup=False)
            trainer.best = None
        return v

    def _build_extractor(self, task_cls) -> dict:
        """The kid/fid extractor on the training device and the protocol that feeds it; returns its reference."""
        from img2img.evaluation import distribution as dist

        p = self.trainer.pipeline
        ref = extractor_ref(task_cls, p, self.metric)
        self.extractor_name = ref["name"]
        self.extractor = dist.build_extractor(ref).to(self.trainer.device)
        self.protocol = getattr(p.train, "val_protocol", None) or dist.default_protocol(self.extractor)
        return ref

    def _prepare_distribution(self, task_cls) -> None:
        from img2img.evaluation import distribution as dist

        trainer, p = self.trainer, self.trainer.pipeline
        ref = self._build_extractor(task_cls)
        size = dist.input_size(self.extractor)
        files, reader, where = reference_files(p, task_cls.data_kind == "paired")
        if len(self.images.a) < 2 or len(files) < 2:
            source = "data.val.pairs" if p.data.val.pairs is not None else "data.val.a"
            raise Img2ImgError(f"train.val_metric {self.metric}: {source} and {where} need at least 2 images each "
                               f"(they have {len(self.images.a)} and {len(files)})")
        start = time.perf_counter()
        self.reference = dist.features(dist.batched((dist.prepare(reader(f), self.protocol, size) for f in files),
                                                    BATCH), self.extractor, trainer.device)
        self.setup = {**dist.setup(self.extractor, dist.extractor_label(ref), self.protocol),
                      "features": int(self.reference.shape[1]), "count": len(self.images.a), "count_ref": len(files)}
        note = dist.fid_warning(len(self.reference), len(self.images.a), self.reference.shape[1])
        if self.metric == "fid" and note:
            trainer.console.print(f"warning: {note}", style="yellow", highlight=False, markup=False)
        trainer.console.print(
            f"validation: {self.metric} with {self.extractor_name} (weights {self.setup['weights']}, protocol "
            f"{self.protocol}), {len(self.images.a)} translated "
            f"{'data.val.pairs' if p.data.val.pairs is not None else 'data.val.a'} "
            f"images against {len(files)} of {where}, every {self.every} steps ({self.reference.shape[1]} features; "
            f"reference computed in {time.perf_counter() - start:.1f} s)", highlight=False, markup=False)

    def _prepare_directions(self, task_cls) -> None:
        """kid/fid in every direction of `directions`: the reference features of each target domain."""
        from img2img.config.domains import split_direction
        from img2img.evaluation import distribution as dist

        trainer, p = self.trainer, self.trainer.pipeline
        ref = self._build_extractor(task_cls)
        size = dist.input_size(self.extractor)
        start = time.perf_counter()
        by_domain: dict[str, np.ndarray] = {}
        self.references = {}
        wheres = []
        for direction in self.directions:
            source, target = split_direction(direction)
            images = self.images.domains.get(source, [])
            if target not in by_domain:
                files, reader, where = domain_reference_files(p, target)
                wheres.append(f"{where} ({len(files)})")
                if len(files) < 2:
                    raise Img2ImgError(f"train.val_metric {self.metric}: {where} needs at least 2 images "
                                       f"(it has {len(files)})")
                by_domain[target] = dist.features(dist.batched((dist.prepare(reader(f), self.protocol, size)
                                                                for f in files), BATCH), self.extractor, trainer.device)
            if len(images) < 2:
                raise Img2ImgError(f"train.val_metric {self.metric}: data.val.{source} needs at least 2 images "
                                   f"(it has {len(images)})")
            self.references[direction] = by_domain[target]
        first = self.references[self.directions[0]]
        self.setup = {**dist.setup(self.extractor, dist.extractor_label(ref), self.protocol),
                      "features": int(first.shape[1]), "directions": list(self.directions),
                      "count": sum(len(self.images.domains.get(split_direction(d)[0], [])) for d in self.directions),
                      "count_ref": sum(int(len(r)) for r in self.references.values())}
        trainer.console.print(
            f"validation: {self.metric} with {self.extractor_name} (weights {self.setup['weights']}, protocol "
            f"{self.protocol}) in {len(self.directions)} directions "
            f"({', '.join(self.directions)}; val_{self.metric} is their mean), against {', '.join(wheres)}, every "
            f"{self.every} steps (references computed in {time.perf_counter() - start:.1f} s)",
            highlight=False, markup=False)

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def scores(self) -> dict[str, float]:
        """The task's scores, plus kid (with kid_std) or fid when that is the metric."""
        trainer = self.trainer
        translators = trainer.generators_for_eval()  # the engine's one access point to the translators
        modes = {d: t.training for d, t in translators.items()}
        sized = {d: SizeAdapter(t, int(getattr(t, "size_multiple", 1))) for d, t in translators.items()}
        for t in translators.values():
            t.eval()
        try:
            with torch.no_grad(), trainer.task.amp.autocast():
                out = {k: float(v) for k, v in trainer.task.validation_scores(sized, self.images).items()}
                fakes = None
                if self.references is not None:
                    from img2img.config.domains import split_direction

                    fakes = {d: self._translate(sized[d], self.images.domains[split_direction(d)[0]])
                             for d in self.directions}
                elif self.metric in DISTRIBUTION_METRICS:
                    fakes = self._translate(sized["a2b"])
        finally:
            for d, t in translators.items():
                t.train(modes[d])
        if isinstance(fakes, dict):
            from img2img.evaluation import distribution as dist

            size = dist.input_size(self.extractor)
            for d, images in fakes.items():
                fake = dist.features(dist.batched((dist.prepare(f, self.protocol, size) for f in images), BATCH),
                                     self.extractor, trainer.device)
                scored = dist.scores(self.references[d], fake, [self.metric])
                scored.pop("kid_subset_size", None)
                out.update({f"{k}_{d}": v for k, v in scored.items()})
            out[self.metric] = float(np.mean([out[f"{self.metric}_{d}"] for d in fakes]))
        elif fakes is not None:
            from img2img.evaluation import distribution as dist

            size = dist.input_size(self.extractor)
            fake = dist.features(dist.batched((dist.prepare(f, self.protocol, size) for f in fakes), BATCH),
                                 self.extractor, trainer.device)
            scored = dist.scores(self.reference, fake, [self.metric])
            scored.pop("kid_subset_size", None)
            out.update(scored)
        return out

    def _translate(self, translator: nn.Module, images: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        from img2img.evaluation.distribution import batched, quantize

        out = []
        for batch in batched(self.images.a if images is None else images, BATCH):
            y = translator(batch.to(self.trainer.device))
            out.extend(quantize(y.float()).cpu())
        return out

    def run(self) -> dict:
        """Score, return the metrics row, and write best.pt when the chosen metric improved."""
        trainer = self.trainer
        start = time.perf_counter()
        scores = self.scores()
        if self.metric not in scores:
            gave = ", ".join(sorted(scores)) or "nothing"
            raise Img2ImgError(f"the {trainer.pipeline.task} task's validation_scores gave {gave}, not "
                               f"'{self.metric}' (train.val_metric); its val_metrics and validation_scores disagree")
        value = scores[self.metric]
        row = {"step": trainer.step, "epoch": trainer.epoch, **{f"val_{k}": v for k, v in scores.items()},
               "val_seconds": time.perf_counter() - start}
        if self.setup is not None:
            row["val_setup"] = dict(self.setup)
        best = trainer.best
        better = math.isfinite(value) and (
            best is None or (value > best["value"] if self.higher else value < best["value"]))
        if better:
            trainer.best = {"metric": self.metric, "value": value, "step": trainer.step,
                            "extractor": self.extractor_name}
            if self.setup is not None:
                trainer.best.update(protocol=self.protocol, weights=self.setup["weights"])
            ckpt_io.atomic_save(trainer.state(), trainer.run.checkpoints / "best.pt", then=trainer.after_failed_write())
            row["val_best"] = 1
        return row


# ---------------------------------------------------------------------------------------------
# loading data.val and the kid/fid reference


def load_val_images(p, paired: bool) -> ValImages:
    from img2img.data import list_images, match_pairs, read_image, read_pair_image, to_tensor

    ch, val = p.data.channels, p.data.val
    if val.pairs is not None:  # side-by-side AB images: the input half and its target (or A and B sets)
        files = list_images(val.pairs, "data.val.pairs")
        swap = paired and p.data.direction == "b2a"
        halves = [read_pair_image(f, ch.a, ch.b) for f in files]
        inputs = [to_tensor(right if swap else left) for left, right in halves]
        targets = [to_tensor(left if swap else right) for left, right in halves]
        names = [f.name for f in files]
        return ValImages(a=inputs, b=targets, paired=paired, names_a=names, names_b=list(names))
    files_a = list_images(val.a, "data.val.a") if val.a is not None else []
    if paired and val.b is not None:
        pairs = match_pairs(files_a, val.a, list_images(val.b, "data.val.b"), val.b, ("data.val.a", "data.val.b"))
        return ValImages(a=[to_tensor(read_image(a, ch.a)) for a, _ in pairs],
                         b=[to_tensor(read_image(b, ch.b)) for _, b in pairs], paired=True,
                         names_a=[a.name for a, _ in pairs], names_b=[b.name for _, b in pairs])
    files_b = list_images(val.b, "data.val.b") if val.b is not None and not paired else []
    images = ValImages(a=[to_tensor(read_image(f, ch.a)) for f in files_a],
                       b=[to_tensor(read_image(f, ch.b)) for f in files_b], paired=False,
                       names_a=[f.name for f in files_a], names_b=[f.name for f in files_b])
    if not paired:
        images.domains = {"a": images.a, "b": images.b}
        for name, folder in val.folders().items():
            if name not in ("a", "b"):
                images.domains[name] = [to_tensor(read_image(f, ch.of(name)))
                                        for f in list_images(folder, f"data.val.{name}")]
    return images


def domain_reference_files(p, domain: str) -> tuple[list[Path], Callable[[Path], torch.Tensor], str]:
    """Real images of `domain` for kid/fid: ``data.val.<domain>``, else its training folder."""
    from img2img.data import list_images, read_image, to_tensor

    data = p.data
    folder, where = data.val.folder(domain), f"data.val.{domain}"
    if folder is None:
        folder, where = data.folder(domain), data.domain_path(domain)
    if folder is None:
        raise Img2ImgError(f"kid/fid validation needs real images of domain {domain}: set data.val.{domain}")
    count = data.channels.of(domain)
    return list_images(folder, where), lambda f: to_tensor(read_image(f, count)), where


def reference_files(p, paired: bool) -> tuple[list[Path], Callable[[Path], torch.Tensor], str]:
    """The real B images kid/fid compare with: data.val.b, else the training targets (data.b, or
    data.a / the pairs' other half when a paired pipeline has data.direction b2a)."""
    from img2img.data import list_images, read_image, read_pair_image, to_tensor

    ch, data = p.data.channels, p.data
    swap = paired and data.direction == "b2a"
    if data.val.pairs is not None:
        def read_target(f: Path) -> torch.Tensor:
            left, right = read_pair_image(f, ch.a, ch.b)
            return to_tensor(left if swap else right)

        return (list_images(data.val.pairs, "data.val.pairs"), read_target,
                f"the {'left' if swap else 'right'} halves of data.val.pairs")
    if data.val.b is not None:
        return list_images(data.val.b, "data.val.b"), lambda f: to_tensor(read_image(f, ch.b)), "data.val.b"
    if data.pairs is not None:
        half = "left" if swap else "right"

        def read_half(f: Path) -> torch.Tensor:
            left, right = read_pair_image(f, ch.b if swap else ch.a, ch.a if swap else ch.b)
            return to_tensor(left if swap else right)

        return list_images(data.pairs, "data.pairs"), read_half, f"the {half} halves of data.pairs"
    key = "a" if swap else "b"
    folder = getattr(data, key)
    if folder is None:
        raise Img2ImgError("kid/fid validation needs real B images: set data.val.b (or data.b)")
    return list_images(folder, f"data.{key}"), lambda f: to_tensor(read_image(f, ch.b)), f"data.{key}"
