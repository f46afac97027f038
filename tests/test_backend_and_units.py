"""Backend selection precedence and the pixel <-> normalized unit helpers."""

import pytest
import torch
import torch.nn.functional as F

import flowtriton
from flowtriton import backend as bk
from flowtriton.ops.units import flow_to_grid, identity_grid


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    monkeypatch.delenv("FLOWTRITON_BACKEND", raising=False)
    bk.set_backend(None)
    yield
    bk.set_backend(None)


def test_precedence_argument_context_global_env(monkeypatch):
    assert bk.requested_backend() == "auto"
    monkeypatch.setenv("FLOWTRITON_BACKEND", "triton")
    assert bk.requested_backend() == "triton"
    flowtriton.set_backend("torch")
    assert bk.requested_backend() == "torch"
    with flowtriton.use_backend("triton"):
        assert bk.requested_backend() == "triton"
        assert bk.requested_backend("torch") == "torch"
    assert bk.requested_backend() == "torch"


def test_auto_uses_torch_on_cpu_and_bad_names_raise(monkeypatch):
    x = torch.zeros(1)
    assert bk.resolve_backend(None, x) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        flowtriton.set_backend("gpu")
    monkeypatch.setenv("FLOWTRITON_BACKEND", "fast")
    with pytest.raises(ValueError, match="FLOWTRITON_BACKEND must be one of"):
        bk.requested_backend()


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' needs a CUDA tensor"):
        bk.resolve_backend("triton", torch.zeros(1))


def test_units_round_trip_and_scale():
    flow = torch.randn(2, 2, 5, 9, dtype=torch.float64)
    norm = flowtriton.pixels_to_normalized(flow)
    torch.testing.assert_close(flowtriton.normalized_to_pixels(norm), flow)
    assert flowtriton.pixel_scale(32, 32) == (15.5, 15.5)
    torch.testing.assert_close(norm[:, 0], flow[:, 0] / 4.0)  # (9 - 1) / 2
    torch.testing.assert_close(norm[:, 1], flow[:, 1] / 2.0)  # (5 - 1) / 2


def test_identity_grid_matches_affine_grid_in_float64():
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=torch.float64)
    for h, w in [(28, 28), (32, 32), (5, 7)]:
        want = F.affine_grid(theta, (1, 1, h, w), align_corners=True)
        torch.testing.assert_close(identity_grid(1, h, w, dtype=torch.float64), want)


def test_flow_to_grid_is_what_grid_sample_needs():
    image = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    flow = torch.full((1, 2, 6, 6), 0.5, dtype=torch.float64)
    out = F.grid_sample(image, flow_to_grid(flow), align_corners=True, padding_mode="border")
    torch.testing.assert_close(out, flowtriton.warp(image, flow, "border"))


def test_pixels_to_normalized_on_a_one_pixel_axis_is_an_error():
    with pytest.raises(ValueError, match=r"single pixel along W \(x\)"):
        flowtriton.pixels_to_normalized(torch.ones(1, 2, 4, 1))
    with pytest.raises(ValueError, match=r"single pixel along H \(y\)"):
        flowtriton.pixels_to_normalized(torch.ones(1, 2, 1, 4))
    grid = flow_to_grid(torch.ones(1, 2, 1, 4, dtype=torch.float64))  # grid_sample's layout still works
    torch.testing.assert_close(grid[0, 0, :, 1], torch.zeros(4, dtype=torch.float64))


def test_unit_scale_is_cached_and_built_without_a_host_copy():
    from flowtriton.ops.units import unit_scale

    like = torch.zeros(1)
    a = unit_scale(5, 9, "normalized", like, factor=0.5)
    assert a is unit_scale(5, 9, "normalized", like, factor=0.5)
    torch.testing.assert_close(a.flatten(), torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="units must be one of"):
        unit_scale(5, 9, "px", like)


def test_tests_never_write_into_the_users_cache():
    import os
    from pathlib import Path

    from flowtriton.data.paths import cache_dir

    assert "flowtriton-test-cache-" in os.environ["FLOWTRITON_CACHE"]
    assert Path(cache_dir()).resolve() != (Path.home() / ".cache" / "flowtriton").resolve()


def test_scale_cache_first_filled_under_inference_mode_still_serves_autograd():
    from flowtriton.ops import units

    units._SCALES.clear()
    with torch.inference_mode():
        flowtriton.normalized_to_pixels(torch.zeros(1, 2, 7, 9))
    flow = torch.zeros(1, 2, 7, 9, requires_grad=True)
    flowtriton.normalized_to_pixels(flow).sum().backward()
    torch.testing.assert_close(flow.grad[0, 0], torch.full((7, 9), 4.0))


@pytest.mark.parametrize("height,width,error,name", [(0, 5, ValueError, "height"), (5, 0, ValueError, "width"),
                                                     (-3, 5, ValueError, "height"), (5.5, 5, TypeError, "height"),
                                                     (5, True, TypeError, "width")])
def test_pixel_scale_refuses_sizes_below_one_pixel(height, width, error, name):
    """pixel_scale(0, 5) returned a negative scale (issue 21)."""
    with pytest.raises(error, match=f"{name} must be"):
        flowtriton.pixel_scale(height, width)
    assert flowtriton.pixel_scale(1, 1) == (0.0, 0.0)
    np = pytest.importorskip("numpy")
    assert flowtriton.pixel_scale(np.int64(3), 5) == (2.0, 1.0)
