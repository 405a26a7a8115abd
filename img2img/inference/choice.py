"""Which backend runs a model: ``--backend torch|onnxruntime|openvino|auto`` for a loaded generator or an
ONNX file. Without ``--backend`` the path decides (``.onnx`` in onnxruntime, anything else in torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from img2img import precision as precisions
from img2img.devices import select_device
from img2img.engine.checkpoint import LoadedGenerator
from img2img.errors import Img2ImgError
from img2img.inference.backends import OnnxBackend, TorchBackend

BACKENDS = ("torch", "onnxruntime", "openvino", "auto")


def check_backend(backend: str | None) -> str | None:
    if backend is None:
        return None
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise Img2ImgError(f"--backend {backend!r}: use torch, onnxruntime, openvino or auto")
    return name


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_precisions(wanted: str) -> list[str]:
    """OpenVINO's precisions offered under `wanted` (auto: fp32, and bf16 where this CPU has it)."""
    from img2img.inference import openvino as ov

    kinds = ["fp32", "bf16"] if wanted == "auto" else [wanted]
    return [k for k in kinds if k in ov.PRECISIONS and (k != "bf16" or ov.bf16_supported())]


def _torch_bf16_native() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def backend_for_loaded(loaded: LoadedGenerator, backend: str | None, *, device: str = "auto", precision: str = "fp32",
                       channels_last: bool = False) -> Any:
    """The backend that runs a run's (or checkpoint's, or safetensors export's) generator."""
    from img2img.inference import auto

    if backend in (None, "torch"):
        return TorchBackend.from_loaded(loaded, device, precision, channels_last)
    if backend == "onnxruntime":
        raise Img2ImgError("--backend onnxruntime runs an exported .onnx file: export this model with `img2img export "
                           "MODEL --out g.onnx` and translate with --model g.onnx, or use --backend openvino, which "
                           "compiles run folders and checkpoints directly")
    from img2img.inference.openvino import OpenVinoBackend, check_device

    wanted = precisions.parse(precision)
    if backend == "openvino":
        if channels_last:
            raise Img2ImgError("--channels-last applies to torch models; OpenVINO chooses its own layout. "
                               "Leave the flag out with --backend openvino.")
        if wanted != "auto":
            return OpenVinoBackend.from_loaded(loaded, wanted, device)
        check_device(device)
        kinds = _openvino_precisions("auto")
        torch_kinds: list[str] = []
    else:  # auto
        if select_device(device).type != "cpu":
            runner = TorchBackend.from_loaded(loaded, device, precision, channels_last)
            runner.notes.append(f"--backend auto runs torch on {runner.device}: OpenVINO runs on the CPU")
            return runner
        if wanted == "fp16":
            raise Img2ImgError("--precision fp16 runs on CUDA; on the CPU use fp32, bf16 or auto")
        kinds = _openvino_precisions(wanted) if _openvino_available() else []
        torch_kinds = [k for k in ("fp32", "bf16") if wanted in ("auto", k) and (k == "fp32" or _torch_bf16_native())]
    reference = auto.Candidate("torch fp32", "fp32", lambda: TorchBackend.from_loaded(loaded, "cpu", "fp32"))
    candidates = [auto.Candidate(f"torch {k}", k, lambda k=k: TorchBackend.from_loaded(loaded, "cpu", k, channels_last))
                  for k in torch_kinds]
    candidates += [auto.Candidate(f"openvino {k}", k, lambda k=k: OpenVinoBackend.from_loaded(loaded, k, device))
                   for k in kinds]
    label = f"--backend {backend} --precision {wanted}"
    runner, choice, notes = auto.choose(reference, candidates, channels=loaded.in_channels,
                                        shape=auto.module_shape(loaded.module), wanted=label)
    if backend == "auto" and not _openvino_available():
        from img2img.inference.openvino import INSTALL_HINT

        notes.append(f"OpenVINO is not installed, so --backend auto chose among torch's ways only; {INSTALL_HINT}")
    runner.choice = choice
    runner.notes += notes
    return runner


def backend_for_onnx(path: Path, backend: str | None, *, device: str = "auto", precision: str = "fp32",
                     direction: str | None = None, channels_last: bool = False) -> Any:
    """The backend that runs an exported ONNX file."""
    from img2img.inference import auto

    if backend in (None, "onnxruntime"):
        return OnnxBackend(path, device, precision, direction, channels_last)
    if backend == "torch":
        raise Img2ImgError(f"{path.name} is an ONNX file: it runs in onnxruntime or openvino (--backend onnxruntime, "
                           "openvino or auto); --backend torch needs the run folder or checkpoint it was exported from")
    from img2img.inference.openvino import OpenVinoBackend, check_device

    wanted = precisions.parse(precision)
    if backend == "openvino" and wanted != "auto":
        return OpenVinoBackend.from_onnx(path, wanted, device, direction, channels_last)
    if backend == "auto" and (device.startswith("cuda") or (device == "auto" and select_device("auto").type == "cuda")):
        runner = OnnxBackend(path, device, "fp32", direction, channels_last)
        if runner.device == "cuda":
            runner.notes.append("--backend auto runs onnxruntime on CUDA: OpenVINO runs on the CPU")
            return runner
    check_device(device)
    reference_runner = OnnxBackend(path, "cpu", "fp32", direction, channels_last)  # checks the file first
    file_kind = reference_runner.precision  # fp32, fp16 (--half) or int8 (--int8)
    reference = auto.Candidate(f"onnxruntime {file_kind}", file_kind, lambda: reference_runner)
    candidates = [reference] if backend == "auto" and wanted in ("auto", "fp32") else []
    if backend == "openvino" or _openvino_available():
        if file_kind == "int8":  # the quantised convolutions run in int8 whatever the hint; one way to run it
            candidates.append(auto.Candidate("openvino int8", "int8",
                                             lambda: OpenVinoBackend.from_onnx(path, "fp32", "cpu", direction)))
        else:
            candidates += [auto.Candidate(f"openvino {k}", k, lambda k=k: OpenVinoBackend.from_onnx(path, k, "cpu",
                                                                                                     direction))
                           for k in _openvino_precisions(wanted)]
    runner, choice, notes = auto.choose(reference, candidates, channels=reference_runner.in_channels,
                                        shape=auto.file_shape(path), wanted=f"--backend {backend} --precision {wanted}")
    runner.choice = choice
    runner.notes += notes
    return runner
