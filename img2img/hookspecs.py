"""The img2img plugin contract: every hook a plugin can implement.

A plugin is a module (or object) with functions decorated by ``@img2img.hookimpl`` whose names are
the hooks below. It is found through the entry-point group ``img2img``::

    [project.entry-points.img2img]
    mything = "img2img_mything"

Each ``register_<kind>s`` hook receives a ``register(name, factory)`` callback. A factory's
*keyword* parameters, all type-annotated, are its YAML parameters: img2img builds a pydantic model
from the signature, so ``{name: my_gen, width: 16}`` is validated before anything runs
(``typing.Annotated[int, pydantic.Field(ge=1)]`` is honoured, unknown keys are rejected). The first
line of the factory's docstring is shown by ``img2img components``.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("img2img")
hookimpl = pluggy.HookimplMarker("img2img")
"""Marks a plugin's hook implementations; the public name is ``img2img.hookimpl``."""


@hookspec
def register_generators(register):
    """Register generators: ``register("name", factory)``.

    ``factory(in_channels: int, out_channels: int, **params) -> torch.nn.Module``. The module maps
    NCHW float images in [-1, 1] to NCHW float images in [-1, 1] of the same height and width.
    Optional attributes the engine uses when present:

    - ``size_multiple: int`` -- height and width must be multiples of it (default 1); translate and
      the ONNX graph pad to it and crop back.
    - ``features(x, layers: Sequence[int]) -> list[Tensor]`` -- the activations after the given
      encoder layers, for feature-level losses such as PatchNCE (the CUT task needs it).
    """


@hookspec
def register_discriminators(register):
    """Register discriminators: ``register("name", factory)``.

    ``factory(in_channels: int, **params) -> torch.nn.Module`` returning raw logits (any shape:
    a patch map or one value per image), or a list of logits tensors (one per scale); the built-in
    adversarial losses judge each scale. Conditional tasks pass ``in_channels`` = input + output
    channels. Optionally it exposes its intermediate features for feature-matching losses: its
    ``forward`` takes a keyword ``features`` and with ``features=True`` returns ``(logits, features)``,
    ``features`` a list per scale of lists of per-layer activations (``img2img/losses.py``).
    """


@hookspec
def register_losses(register):
    """Register losses: ``register("name", factory)``.

    ``factory(**params) -> torch.nn.Module``. Either a pairwise loss whose
    ``forward(prediction, target)`` returns a scalar (cycle, identity, reconstruction terms), or a
    subclass of ``img2img.AdversarialLoss`` with ``d_loss(real_logits, fake_logits)``,
    ``g_loss(fake_logits)`` and optionally ``penalty(discriminator, real, fake)``; written for one
    logits tensor, they also take lists of them (one per scale, averaged by the base class). A
    feature-matching loss is pairwise over discriminator features, ``forward(fake_features,
    real_features)`` (the built-in ``feature_matching``). In a pipeline
    each loss also takes ``weight`` (handled by the task, not passed to the factory).
    """


@hookspec
def register_tasks(register):
    """Register training tasks: ``register("name", TaskClass)``.

    ``TaskClass`` subclasses ``img2img.tasks.Task``: it names its pipeline model (``Pipeline``),
    builds its networks from the registry, performs one optimisation step on a batch, and says how
    the translator of each direction is made from its networks (``translator_nets``, or
    ``translator()`` / ``build_translator()`` for one composed of several), and which domains it loads
    (``domains``, the batch's keys) and directions (``<from>2<to>``) it translates. The engine gives it
    validation, EMA, exact resume, samples, translate, export, serve and torchrun. See
    ``img2img/tasks/base.py`` for the whole contract. What its validation can score is ``val_metrics`` /
    ``validation_scores`` (``img2img/tasks/validation.py``); kid and fid come from the engine for any task
    with an ``a2b`` translator.
    """


@hookspec
def register_feature_extractors(register):
    """Register feature extractors for FID/KID: ``register("name", factory)``.

    ``factory(**params) -> torch.nn.Module`` mapping ``[N, 3, H, W]`` float images in [-1, 1] to
    ``[N, D]`` features (grey and RGBA images reach it as RGB). Attributes:

    - ``input_size: int`` (required) -- the square size it resizes to itself; the ``clean``,
      ``legacy_pytorch`` and ``legacy_tensorflow`` protocols (``img2img evaluate --protocol``,
      ``train.val_protocol``) resize to it beforehand.
    - ``num_features: int`` -- D, when known before the first batch.
    - ``default_protocol: str`` -- the protocol its numbers belong to (default ``torch``: its own resize).
    - ``weights_digest: str`` -- the first 8 hex digits of the sha256 of the file it loaded, recorded
      with every FID/KID value (``unknown`` when a factory with ``weights`` leaves it out).

    A factory that loads a file sets ``factory.weights =
    img2img.evaluation.weights.WeightsFile(name, file, url, sha256)``: ``img2img weights download
    NAME`` fetches it, ``img2img validate`` reports it missing, and a ``weights: Path | None``
    parameter, when the factory has one, says where it is instead of the torch hub cache.
    """


@hookspec
def register_pipelines(register):
    """Register built-in pipelines: ``register("name", path)``.

    ``path`` is a pipeline YAML file shipped inside the plugin's package (declare it as package data),
    e.g. ``Path(__file__).parent / "pipelines" / "horse2zebra-cut.yaml"``. ``img2img train NAME``
    finds it by name (a file that exists always wins), ``img2img pipelines`` lists it and
    ``img2img pipelines init NAME OUT.yaml`` copies it. Relative data paths in a built-in pipeline
    resolve against the user's current folder, not the package's. A built-in name cannot be
    shadowed; two plugins registering the same name are both reported and neither is chosen.
    """


@hookspec
def register_commands(app):
    """Add commands to the ``img2img`` command line: ``app`` is the ``typer.Typer`` application."""
