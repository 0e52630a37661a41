"""A stand-in for mmcv's compiled `mmcv._ext`, so mmdet/mmseg models import and run on CPU with
`mmcv-lite` (see docs/dependencies.md, "mmcv").

`install()` registers a module object as `sys.modules["mmcv._ext"]` *only* when no compiled
extension is importable: a real mmcv build (e.g. CUDA on a cluster) always wins. The module's spec
has no loader, so mmengine's `mmcv_full_available()` (which asks `pkgutil.find_loader`) stays False.

It implements the ops the CPU models need on top of torchvision, with the exact call forms that
mmcv's Python wrappers use (mmcv/ops/nms.py, mmcv/ops/roi_align.py):
  nms(boxes, scores, iou_threshold, offset) -> kept indices, sorted by descending score
  roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                    spatial_scale, sampling_ratio, pool_mode, aligned)     (writes `output`)
  roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height,
                     aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned)
                                                                          (adds into `grad_input`)
Every other name mmcv.ops looks up (`ext_loader.load_ext` asserts `hasattr`) exists, but calling
it raises a RuntimeError that says the compiled ops are needed.

Call `install()` before anything imports `mmcv.ops` (mmdet.models and mmseg.models do).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

_NAME = "mmcv._ext"
_MARK = "__harness_mmcv_ops_shim__"
_AVG_POOL = 1  # mmcv's RoIAlignFunction passes pool_mode 0 for 'max', 1 for 'avg'


def needs_compiled(name: str, detail: str = "not implemented by the CPU stand-in (downstream.mmcv_ops)"):
    return RuntimeError(f"{name} needs mmcv's compiled ops (see docs/dependencies.md): {detail}; "
                        "build mmcv 2.1.0 from source to use it")


def _unimplemented(name: str):
    def op(*args, **kwargs):
        raise needs_compiled(name)
    op.__name__ = op.__qualname__ = name
    return op


def nms(boxes, scores, iou_threshold, offset=0):
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    import torch

    if offset not in (0, 1):
        raise needs_compiled("nms", f"offset must be 0 or 1, got {offset!r}")
    if offset == 1:
        # mmcv's offset 1 measures width as x2 - x1 + 1: the same IoU as offset 0 on boxes whose
        # far corner is moved by +1 (intersection and both areas grow identically).
        boxes = boxes.clone()
        boxes[:, 2:4] += 1
    return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))


def _check_avg(name: str, pool_mode) -> None:
    if int(pool_mode) != _AVG_POOL:
        raise needs_compiled(name, "only average pool mode is implemented on CPU, not 'max'")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                      spatial_scale, sampling_ratio, pool_mode, aligned):
    import torchvision  # noqa: F401
    import torch

    _check_avg("roi_align_forward", pool_mode)
    result = torch.ops.torchvision.roi_align(
        input, rois, float(spatial_scale), int(aligned_height), int(aligned_width),
        int(sampling_ratio), bool(aligned))
    output.copy_(result)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height,
                       aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
    import torchvision  # noqa: F401
    import torch

    _check_avg("roi_align_backward", pool_mode)
    batch, channels, height, width = grad_input.shape
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output, rois, float(spatial_scale), int(aligned_height), int(aligned_width),
        batch, channels, height, width, int(sampling_ratio), bool(aligned))
    grad_input.add_(grad.to(grad_input.dtype))  # the compiled kernel accumulates into grad_input


_IMPLEMENTED = {"nms": nms, "roi_align_forward": roi_align_forward,
                "roi_align_backward": roi_align_backward}


def _make_module() -> types.ModuleType:
    mod = types.ModuleType(_NAME, "CPU stand-in for mmcv's compiled ops (downstream.mmcv_ops).")
    mod.__spec__ = importlib.machinery.ModuleSpec(_NAME, None)  # no loader: not "mmcv-full"
    mod.__loader__ = None
    mod.__dict__.update(_IMPLEMENTED)
    setattr(mod, _MARK, True)

    def __getattr__(name: str):
        if name.startswith("_"):  # dunders (__path__, __file__, ...) must stay absent
            raise AttributeError(f"module {_NAME!r} has no attribute {name!r}")
        op = _unimplemented(name)
        setattr(mod, name, op)
        return op

    mod.__getattr__ = __getattr__
    return mod


def is_installed() -> bool:
    return getattr(sys.modules.get(_NAME), _MARK, False)


def install() -> bool:
    """Register the stand-in as `mmcv._ext`. True when the stand-in is (now or already) in place;
    False when a real compiled extension exists (it is used instead) or mmcv is not installed."""
    if is_installed():
        return True
    if _NAME in sys.modules:  # a real extension is already imported
        return False
    try:
        spec = importlib.util.find_spec(_NAME)  # imports the `mmcv` package itself
    except (ImportError, ValueError):
        return False  # no mmcv at all
    if spec is not None:
        return False  # a compiled mmcv._ext exists: step aside
    mod = _make_module()
    sys.modules[_NAME] = mod
    setattr(sys.modules["mmcv"], "_ext", mod)
    return True
