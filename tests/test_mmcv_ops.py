"""downstream.mmcv_ops: the CPU stand-in for mmcv's compiled ops, checked against torchvision."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from medssl_bench.downstream import mmcv_ops

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def shim():
    installed = mmcv_ops.install()
    assert installed or not mmcv_ops.is_installed()
    if not installed:
        pytest.skip("a compiled mmcv._ext is present; the stand-in steps aside")
    assert mmcv_ops.install() is True  # idempotent
    assert mmcv_ops.install() is True


def random_boxes(n: int, gen: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("iou", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision(iou):
    from mmcv.ops import nms

    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        boxes = random_boxes(200, gen)
        scores = torch.rand(200, generator=gen)
        if trial % 2:  # many ties in the scores
            scores = (scores * 5).floor() / 5
        dets, inds = nms(boxes, scores, iou)
        expected = torchvision.ops.nms(boxes, scores, iou)
        assert torch.equal(inds, expected)
        assert torch.equal(dets[:, :4], boxes[expected])
        assert torch.equal(dets[:, 4], scores[expected])


def test_nms_offset_one_and_empty():
    from mmcv.ops import nms

    boxes = torch.tensor([[0., 0., 9., 9.], [5., 0., 14., 9.], [30., 30., 31., 31.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # offset 1: boxes are 10x10, overlap 5x10 -> IoU 50/150 = 1/3; offset 0: 36/126 ~ 0.286
    assert nms(boxes, scores, 0.3, offset=1)[1].tolist() == [0, 2]
    assert nms(boxes, scores, 0.3, offset=0)[1].tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.35, offset=1)[1].tolist() == [0, 1, 2]
    dets, inds = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert inds.numel() == 0 and dets.shape == (0, 5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_forward_backward_match_torchvision(aligned, sampling_ratio):
    from mmcv.ops import RoIAlign

    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 16, 20, generator=gen, dtype=torch.float64)
    boxes = random_boxes(12, gen, size=60.0).double()
    rois = torch.cat([torch.randint(0, 2, (12, 1), generator=gen).double(), boxes], dim=1)
    kwargs = dict(output_size=(7, 5), spatial_scale=0.25, sampling_ratio=sampling_ratio)

    x1 = feats.clone().requires_grad_()
    out = RoIAlign(**kwargs, pool_mode="avg", aligned=aligned)(x1, rois)
    x2 = feats.clone().requires_grad_()
    ref = torchvision.ops.roi_align(x2, rois, aligned=aligned, **kwargs)
    assert out.shape == ref.shape == (12, 3, 7, 5)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(upstream)
    ref.backward(upstream)
    assert x1.grad.abs().sum() > 0
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6, rtol=0)

    from mmcv.ops import roi_align
    small = feats[:1, :1, :6, :6].clone().requires_grad_()
    small_rois = torch.tensor([[0., 1.5, 0.5, 4.5, 5.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: roi_align(x, small_rois, (2, 2), 1.0, sampling_ratio, "avg", aligned), (small,))


def test_unsupported_ops_raise_clear_errors():
    import mmcv
    from mmcv.ops import RoIAlign, nms_rotated  # noqa: F401

    ext = sys.modules["mmcv._ext"]
    assert mmcv._ext is ext
    with pytest.raises(RuntimeError, match=r"nms_rotated needs mmcv's compiled ops \(see "):
        ext.nms_rotated(torch.zeros(1, 5), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(RuntimeError, match="deform_conv_forward needs mmcv's compiled ops"):
        ext.deform_conv_forward()
    with pytest.raises(RuntimeError, match="max"):
        RoIAlign(2, pool_mode="max")(torch.zeros(1, 1, 4, 4), torch.tensor([[0., 0., 0., 3., 3.]]))
    assert not hasattr(ext, "__path__") and not hasattr(ext, "__file__")
    from mmengine.utils.dl_utils import mmcv_full_available
    assert mmcv_full_available() is False


def run_python(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mmdet_and_mmseg_models_import_in_a_fresh_process():
    run_python("""
        from medssl_bench.downstream.mmcv_ops import install
        assert install() is True and install() is True
        import mmseg.models, mmdet.models
        from mmcv.ops import nms, RoIAlign
        from mmengine.utils.dl_utils import mmcv_full_available
        assert mmcv_full_available() is False
    """)


def test_a_compiled_extension_wins(tmp_path):
    # A module file named _ext on mmcv's package path plays the compiled extension.
    (tmp_path / "_ext.py").write_text("REAL = True\n")
    run_python(f"""
        import sys, mmcv
        mmcv.__path__.append({str(tmp_path)!r})
        from medssl_bench.downstream.mmcv_ops import install, is_installed
        assert install() is False and not is_installed()
        import mmcv._ext
        assert mmcv._ext.REAL and "mmcv._ext" in sys.modules
        assert install() is False  # also once it is imported
    """)
