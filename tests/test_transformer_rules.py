"""Gradient rules of the ops that transformer and upsampling exports put on the gradient path:
Gelu, Einsum, Slice with any step, ConvTranspose and Resize. One-node models against central
finite differences (tests/gradcheck.py: float64 where onnxruntime has the kernels, else float32),
plus exact checks of the Resize interpolation matrices against onnxruntime's own Resize."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from onnx import TensorProto
from scipy.special import erf

from gradcheck import assert_vjp, one_node_model, separated, session, vjp_error
from swag_onnx import augment_model
from swag_onnx.errors import UnsupportedOpsError
from swag_onnx.graph.rules.resampling import interpolation_matrix
from swag_onnx.graph.rules.transformer import parse_einsum

RNG = np.random.default_rng(11)
X4 = (2, 3, 4, 5)


# ----- Gelu --------------------------------------------------------------------------------------

def gelu_reference(x: np.ndarray, approximate: str) -> np.ndarray:
    """GELU by its ONNX definition, in float64 (scipy's erf)."""
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    """onnxruntime has Gelu and Erf in float32 only, where finite differences of the model drown
    in rounding (~1e-3): the float32 gradient is checked against central differences of GELU's
    definition in float64 instead, and the model's forward against that definition."""
    x = separated(X4, RNG) * 1.6  # spans the curved part around 0 and both tails
    model = one_node_model("Gelu", X4, attrs={"approximate": approximate},
                           dtype=TensorProto.FLOAT, opset=20)
    x32 = x.astype(np.float32)
    y = session(model).run(None, {"x": x32})[0].reshape(X4)
    assert np.abs(y - gelu_reference(x, approximate)).max() < 1e-6
    seed = RNG.standard_normal((2, 60)).astype(np.float32)
    grad = session(augment_model(model)).run(["swag.grad.x"], {"x": x32, "swag.seed": seed})[0]
    eps = 1e-5
    slope = (gelu_reference(x + eps, approximate)
             - gelu_reference(x - eps, approximate)) / (2 * eps)
    assert np.abs(grad - seed.reshape(X4) * slope).max() < 1e-5 * np.abs(seed).max()


# ----- Einsum ------------------------------------------------------------------------------------

@pytest.mark.parametrize("equation,other_shape", [
    ("bhid,bhjd->bhij", (2, 3, 6, 5)),  # attention scores q k^T (x is q: [2, 3, 4, 5])
    ("bhij,bhjd->bhid", (2, 3, 5, 7)),  # attention-weighted values
    ("abcd,cde->abe", (4, 5, 6)),  # a contraction over two axes
    ("abcd,d->abc", (5,)),
    ("abcd,ef->abcdef", (2, 2)),  # outer product
    ("...cd,...de->...ce", (1, 3, 5, 2)),  # ellipsis, broadcast over the batch
    ("abcd,bd->ac", (3, 5)),  # b and d summed in both operands
    ("abcd,bd", (3, 5)),  # implicit output: ac
])
def test_einsum_two_operands(equation, other_shape):
    assert_vjp("Einsum", X4, [RNG.standard_normal(other_shape)], {"equation": equation})


@pytest.mark.parametrize("equation", ["abcd->adcb", "abcd->ac", "abcd->d", "a b c d -> b d"])
def test_einsum_one_operand(equation):
    assert_vjp("Einsum", X4, attrs={"equation": equation})


def test_einsum_x_as_second_operand():
    """The gradient goes to the operand in second place (keys of an attention product)."""
    q = RNG.standard_normal((2, 3, 6, 5))
    assert_vjp("Einsum", X4, [q], {"equation": "bhjd,bhid->bhij"})


def test_parse_einsum_expands_ellipsis_right_aligned():
    terms, output, ellipsis = parse_einsum("...ij,...jk->...ik", [4, 3])
    assert ellipsis == 2 and output[-2:] == "ik" and len(output) == 4
    assert terms[0][2:] == "ij" and terms[1][1:] == "jk" and terms[1][0] == terms[0][1]


def test_einsum_diagonal_is_refused():
    model = one_node_model("Einsum", (2, 3, 3, 3), attrs={"equation": "abii->ab"})
    with pytest.raises(UnsupportedOpsError, match="repeated label"):
        augment_model(model)


# ----- Slice with steps --------------------------------------------------------------------------

@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([0, 0], [10**9, 10**9], [2, 3], [2, 2]),  # patch merging: x[..., 0::2, 0::2]
    ([1, 1], [10**9, 10**9], [2, 3], [2, 2]),
    ([1], [5], [3], [3]),
    ([-1], [-10**9], [3], [-1]),  # reversal
    ([3, -2], [0, -10**9], [2, 3], [-2, -3]),
    ([4], [-100], [3], [-2]),  # start beyond the end, clamped to dim - 1
    ([0, 2], [10**9, 0], [1, 3], [2, -1]),
    ([-100, 10], [100, -10], [2, 3], [3, -4]),  # bounds clamped on both sides
])
def test_slice_with_steps(starts, ends, axes, steps):
    inputs = [np.array(starts), np.array(ends), np.array(axes), np.array(steps)]
    assert_vjp("Slice", X4, inputs)


@settings(max_examples=30, deadline=None)
@given(start=st.integers(-8, 8), end=st.integers(-8, 8), step=st.sampled_from([-3, -2, -1, 2, 3]),
       axis=st.integers(0, 3))
def test_slice_step_property(start, end, step, axis):
    size = X4[axis]
    assume(len(range(size)[slice(start, end, step)]) > 0)
    inputs = [np.array([start]), np.array([end]), np.array([axis]), np.array([step])]
    assert_vjp("Slice", X4, inputs)


# ----- ConvTranspose -----------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(groups=st.sampled_from([1, 2]), per_group_in=st.integers(1, 3),
       per_group_out=st.integers(1, 3), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(*[st.integers(0, 2)] * 4), adjust=st.tuples(st.integers(0, 2),
                                                                 st.integers(0, 2)))
def test_conv_transpose_property(groups, per_group_in, per_group_out, kernel, stride, dilation,
                                 pads, adjust):
    adjust = [min(a, s - 1) for a, s in zip(adjust, stride)]  # onnxruntime: below the stride
    pads = [min(p, (k - 1) * d) for p, k, d in zip(pads, kernel * 2, dilation * 2)]
    cin, cout = groups * per_group_in, groups * per_group_out
    w = RNG.standard_normal((cin, per_group_out) + kernel)
    attrs = {"group": groups, "strides": list(stride), "dilations": list(dilation), "pads": pads,
             "output_padding": adjust}
    assert_vjp("ConvTranspose", (2, cin, 4, 5), [w, RNG.standard_normal(cout)], attrs,
               float_eps=0.1)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_transpose_auto_pad(auto_pad):
    w = RNG.standard_normal((3, 2, 3, 3))  # total padding 1: odd, its side depends on auto_pad
    assert_vjp("ConvTranspose", (1, 3, 4, 5), [w], {"strides": [2, 2], "auto_pad": auto_pad,
                                                    "kernel_shape": [3, 3]}, float_eps=0.1)


@pytest.mark.parametrize("kernel", [3, 4])  # odd and even total padding
def test_conv_transpose_output_shape(kernel):
    w = RNG.standard_normal((3, 2, kernel, kernel))
    assert_vjp("ConvTranspose", (1, 3, 4, 5), [w], {"strides": [2, 2], "output_shape": [8, 10]},
               float_eps=0.1)


def test_conv_transpose_weight_gradient():
    """Meta-saliency: the weight and bias gradients of a ConvTranspose equal finite differences
    of the score in the weights."""
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    bias = RNG.standard_normal(6).astype(np.float32)
    attrs = {"group": 2, "strides": [2, 3], "pads": [1, 0, 0, 1], "output_padding": [1, 2]}
    model = one_node_model("ConvTranspose", (1, 4, 3, 4), [w, bias], attrs,
                           dtype=TensorProto.FLOAT)
    augmented = session(augment_model(model, weights=True))
    x = RNG.standard_normal((1, 4, 3, 4)).astype(np.float32)
    c = RNG.standard_normal((1, int(np.prod(session(model).run(None, {"x": x})[0].shape[1:])))
                            ).astype(np.float32)
    outs = dict(zip([o.name for o in augmented.get_outputs()],
                    augmented.run(None, {"x": x, "swag.seed": c})))

    def score(weights, b):
        return float(np.sum(c * augmented.run(["swag.score"], {"x": x, "swag.seed": c, "in0":
                                                               weights, "in1": b})[0]))
    for name, value, other in (("in0", w, bias), ("in1", bias, w)):
        t = RNG.standard_normal(value.shape).astype(np.float32)
        eps = 0.05  # the score is linear in the weights: any step is exact up to rounding
        args = ((value + eps * t, other), (value - eps * t, other))
        if name == "in1":
            args = ((other, value + eps * t), (other, value - eps * t))
        numeric = (score(*args[0]) - score(*args[1])) / (2 * eps)
        analytic = float(np.sum(t * outs[f"swag.wgrad.{name}"]))
        assert abs(numeric - analytic) < 1e-3 * max(1.0, abs(numeric)), name


# ----- Resize ------------------------------------------------------------------------------------

MODES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
         "asymmetric", "tf_half_pixel_for_nn"]


def _resize_attrs(mode, coordinates, nearest_mode="round_prefer_floor", exclude_outside=0):
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates}
    if mode == "nearest":
        attrs["nearest_mode"] = nearest_mode
    if mode == "cubic":
        attrs.update(cubic_coeff_a=-0.5 if exclude_outside else -0.75,
                     exclude_outside=exclude_outside)
    return attrs


RESIZE_CASES = (
    [("nearest", c, n, 0) for c in MODES if c != "half_pixel_symmetric"
     for n in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")]
    + [("linear", c, "", 0) for c in MODES]
    + [("cubic", c, "", e) for c in MODES for e in (0, 1)])


@pytest.mark.parametrize("mode,coordinates,nearest_mode,exclude_outside", RESIZE_CASES)
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 3.0), (1, 1, 0.5, 1.7), (1, 1, 1.0, 0.6)])
def test_resize_matrices_match_onnxruntime(mode, coordinates, nearest_mode, exclude_outside,
                                           scales):
    """y = A_h x A_w^T exactly (float32 rounding), for onnxruntime's Resize of a random x."""
    shape = (1, 2, 6, 5)
    attrs = _resize_attrs(mode, coordinates, nearest_mode, exclude_outside)
    model = one_node_model("Resize", shape, ["", np.array(scales, np.float32)], attrs,
                           dtype=TensorProto.FLOAT, opset=19)
    x = RNG.standard_normal(shape).astype(np.float32)
    y = session(model).run(None, {"x": x})[0].reshape(1, 2, -1)
    out_h, out_w = int(np.floor(6 * scales[2])), int(np.floor(5 * scales[3]))
    a_h = interpolation_matrix(6, out_h, scales[2], attrs)
    a_w = interpolation_matrix(5, out_w, scales[3], attrs)
    expected = np.einsum("oh,nchw,pw->ncop", a_h, x.astype(np.float64), a_w).reshape(1, 2, -1)
    assert np.abs(y - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("mode,coordinates", [
    ("nearest", "asymmetric"), ("linear", "half_pixel"), ("linear", "pytorch_half_pixel"),
    ("linear", "align_corners"), ("cubic", "half_pixel"), ("cubic", "align_corners"),
])
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 2.0), (1, 1, 0.5, 1.5)])
def test_resize_gradient_with_scales(mode, coordinates, scales):
    attrs = _resize_attrs(mode, coordinates, "floor")
    assert_vjp("Resize", (1, 2, 6, 8), ["", np.array(scales, np.float32)], attrs, opset=19,
               float_eps=0.1)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_gradient_with_sizes_and_axes(mode):
    """Sizes instead of scales, on the H and W axes of a channels-last tensor (axes attribute):
    the contraction runs on an axis that is neither of the last two."""
    attrs = {**_resize_attrs(mode, "half_pixel"), "axes": [1, 2]}
    assert_vjp("Resize", (1, 5, 4, 3), ["", "", np.array([9, 7], np.int64)], attrs, opset=19,
               float_eps=0.1)


def test_resize_nearest_half_pixel_symmetric_is_refused():
    """onnxruntime's coordinates differ from the definition by rounding there (1.9999999 for
    2.0 at scale 0.6): floor and ceil would pick another sample, so the rule refuses."""
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel_symmetric"}
    model = one_node_model("Resize", (1, 2, 4, 4), ["", np.array([1, 1, 2, 2], np.float32)],
                           attrs, dtype=TensorProto.FLOAT, opset=19)
    with pytest.raises(UnsupportedOpsError, match="half_pixel_symmetric"):
        augment_model(model)


def test_resize_crop_and_resize_is_refused():
    attrs = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}
    model = one_node_model("Resize", (1, 2, 4, 4), [np.array([0, 0, 0, 0, 1, 1, 1, 1],
                                                             np.float32),
                                                    np.array([1, 1, 2, 2], np.float32)],
                           attrs, dtype=TensorProto.FLOAT, opset=19)
    with pytest.raises(UnsupportedOpsError, match="tf_crop_and_resize"):
        augment_model(model)


# Inexact scales (output size floor(in * scale), ratios that are not integers), every mode and
# coordinate transformation mode: 6 * 1.7 = 10.2 -> 10 rows, 8 * 0.7 = 5.6 -> 5 columns.
INEXACT_CASES = (
    [("nearest", c, n, 0) for c in MODES if c != "half_pixel_symmetric"
     for n in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")]
    + [("linear", c, "", 0) for c in MODES]
    + [("cubic", c, "", e) for c in MODES for e in (0, 1)])


@pytest.mark.parametrize("mode,coordinates,nearest_mode,exclude_outside", INEXACT_CASES)
def test_resize_gradient_with_inexact_scales(mode, coordinates, nearest_mode, exclude_outside):
    attrs = _resize_attrs(mode, coordinates, nearest_mode, exclude_outside)
    assert_vjp("Resize", (1, 2, 6, 8), ["", np.array([1, 1, 1.7, 0.7], np.float32)], attrs,
               opset=19, float_eps=0.1)


@pytest.mark.parametrize("size,scale", [(10, 1.3), (23, 10 / 23), (6, 10 / 6)])
def test_resize_scales_sized_differently_by_onnxruntime_are_refused(size, scale):
    """floor(size * scale) is one more in onnxruntime's float32 than in ONNX shape inference's
    double: the gradient graph would hold both sizes and not load, so the rule refuses in one
    line naming the scale."""
    model = one_node_model("Resize", (1, 2, size, 4), ["", np.array([1, 1, scale, 1], np.float32)],
                           {"mode": "linear"}, dtype=TensorProto.FLOAT, opset=19)
    with pytest.raises(UnsupportedOpsError, match=rf"Resize with scales {np.float32(scale):.8g} "
                                                  rf"on an axis of {size}: onnxruntime makes"):
        augment_model(model)


@pytest.mark.parametrize("x_first,other_shape", [(True, (2, 3, 4, 5)), (False, (4, 1)),
                                                 (True, (1, 3, 1, 5))])
def test_where(x_first, other_shape):
    """Where(c, x, b) and Where(c, b, x), b broadcast or not: finite differences."""
    condition = RNG.random((2, 1, 4, 5)) < 0.5
    other = RNG.standard_normal(other_shape)
    for dtype in (TensorProto.DOUBLE, TensorProto.FLOAT):
        model = one_node_model("Where", X4, [condition, other.astype(np.float64)], dtype=dtype)
        node = model.graph.node[-2]
        node.input[:] = ["in0", "x", "in1"] if x_first else ["in0", "in1", "x"]
        x = RNG.standard_normal(X4).astype(np.float64 if dtype == TensorProto.DOUBLE
                                            else np.float32)
        assert vjp_error(model, x, eps=1e-6 if dtype == TensorProto.DOUBLE else 0.1) < 1e-4
