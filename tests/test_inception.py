"""FID's Inception-v3 (dgm.eval.inception): the weights' layout, loading, preprocessing, outputs.

The pretrained weights are not available in tests: every check runs with random weights of the
right layout. Bit-level parity with torch-fidelity is measured by
benchmarks/parity_torch_fidelity.py (docs/parity.md). Full 299x299 forwards are slow on CPU, so
this file runs only two of them (two images each).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dgm.errors import DgmError
from dgm.eval.inception import (
    MISSING_WEIGHTS,
    WEIGHTS_ENV,
    FIDInceptionV3,
    convert_to_safetensors,
    load_inception,
    random_inception_weights,
    resize_bilinear_tf1,
)

KEYS_FILE = Path(__file__).parent / "data" / "inception_keys.json"
HOW_TO_GET = ("FID with Inception needs the pt_inception-2015-12-05 weights: download "
              "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
              "weights-inception-2015-12-05-6726825d.pth and pass --inception-weights FILE or set "
              "DGM_INCEPTION_WEIGHTS=FILE")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The same random weights as .pth (a plain dict, like the real file) and as .safetensors."""
    state = random_inception_weights(seed=0)
    root = tmp_path_factory.mktemp("inception")
    torch.save(state, root / "weights.pth")
    save_file(state, str(root / "weights.safetensors"))
    return {"pth": root / "weights.pth", "safetensors": root / "weights.safetensors"}


@pytest.fixture(scope="module")
def net(files) -> FIDInceptionV3:
    return load_inception(files["pth"])


@pytest.fixture(scope="module")
def gray_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 1, 20, 24), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def output(net, gray_images):
    return net(gray_images)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- the layout of the weights -------------------------------------------------------------------
def test_state_dict_matches_torch_fidelity_definition():
    recorded = json.loads(KEYS_FILE.read_text())
    assert "torch-fidelity 0.4.0" in recorded["provenance"]
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    assert ours == recorded["keys"]
    assert list(ours) == list(recorded["keys"])  # same order as well


def test_random_weights_have_the_files_layout():
    recorded = json.loads(KEYS_FILE.read_text())["keys"]
    in_file = {k: v for k, v in recorded.items() if not k.endswith("num_batches_tracked")}
    state = random_inception_weights(seed=1)
    assert {k: list(v.shape) for k, v in state.items()} == in_file
    assert all(v.dtype == torch.float32 for v in state.values())


def test_network_is_a_fixed_eval_mode_instrument(net):
    assert not net.training
    net.train()
    assert not net.training and not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


# --- outputs ---------------------------------------------------------------------------------------
def test_output_shapes_and_heads(net, output):
    assert output.pool.shape == (2, 2048) and output["pool"] is output.pool
    assert output.logits.shape == output.logits_unbiased.shape == (2, 1008)
    assert output.pool.dtype == torch.float32 and torch.isfinite(output.pool).all()
    assert (output.pool >= 0).all()  # global average of ReLU activations
    assert not torch.equal(output.pool[0], output.pool[1])
    torch.testing.assert_close(output.logits_unbiased, output.pool @ net.fc.weight.T)
    torch.testing.assert_close(output.logits - output.logits_unbiased, net.fc.bias.expand(2, -1))
    probs = output["probs"]  # IS: softmax over all 1008 outputs of the unbiased logits, in float64
    assert probs.dtype == torch.float64 and probs.shape == (2, 1008)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(probs, torch.softmax(output.logits_unbiased.double(), 1))


def test_pth_and_safetensors_give_identical_outputs(files, net, output, gray_images):
    other = load_inception(files["safetensors"])
    theirs, ours = other.state_dict(), net.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    again = other(gray_images)  # same shapes as the first forward: oneDNN's compiled kernels are reused
    assert torch.equal(again.pool, output.pool) and torch.equal(again.logits, output.logits)


def test_grayscale_is_repeated_and_floats_are_quantised(net, gray_images):
    rgb = gray_images.expand(-1, 3, -1, -1)
    reference = net.preprocess(rgb)
    assert reference.shape == (2, 3, 299, 299)
    assert torch.equal(net.preprocess(gray_images), reference)
    assert torch.equal(net.preprocess(rgb.float() / 255), reference)
    # floats are rounded to the nearest 8-bit level (as when saved to PNG) and clamped to [0, 1]
    jitter = (torch.rand(rgb.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9 / 255
    assert torch.equal(net.preprocess(rgb.float() / 255 + jitter), reference)
    assert torch.equal(net.preprocess(torch.full((1, 3, 16, 16), 1.2)), torch.full((1, 3, 299, 299), 127 / 128))
    assert torch.equal(net.preprocess(torch.full((1, 1, 16, 16), -0.1)), torch.full((1, 3, 299, 299), -1.0))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 2, 32, 32), "RGB (3 channels) or grayscale (1 channel) images, got 2 channels"),
    (torch.zeros(2, 4, 32, 32), "got 4 channels"),
    (torch.zeros(2, 3, 8, 32), "at least 16x16 pixels, got 8x32"),
    (torch.zeros(3, 32, 32), "a batch of images (B, C, H, W), got (3, 32, 32)"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.int32), "uint8 images (0..255) or floats in [0, 1], got torch.int32"),
    (torch.full((1, 3, 32, 32), 255.0), "float images in [0, 1], got values in [255, 255]: rescale them"),
    (torch.full((1, 3, 32, 32), -1.0), "float images in [0, 1], got values in [-1, -1]"),
])
def test_bad_inputs_are_one_line_errors(net, bad, message):
    with pytest.raises(DgmError) as excinfo:
        net(bad)
    assert message in one_line_error(excinfo)


# --- the TF1.x resize ------------------------------------------------------------------------------
def tf1_resize_numpy(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1.x resize_bilinear(align_corners=False) of one (H, W) image, written from its definition:
    output pixel i samples source coordinate i * in/out (no half-pixel offset), clamped at the edge."""
    def axis(n_in: int, n_out: int):
        src = np.arange(n_out) * (n_in / n_out)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    ylo, yhi, wy = axis(img.shape[0], out_h)
    xlo, xhi, wx = axis(img.shape[1], out_w)
    top = img[ylo][:, xlo] * (1 - wx) + img[ylo][:, xhi] * wx
    bottom = img[yhi][:, xlo] * (1 - wx) + img[yhi][:, xhi] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def test_tf1_resize_known_values():
    row = torch.tensor([0.0, 10.0, 20.0, 30.0]).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    up = resize_bilinear_tf1(row, (2, 8))[0, 0, 0]
    assert up.tolist() == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0]  # the edge repeats
    down = resize_bilinear_tf1(row, (2, 3))[0, 0, 0]
    torch.testing.assert_close(down, torch.tensor([0.0, 40 / 3, 80 / 3]))  # samples 0, 4/3, 8/3
    # not the half-pixel convention of F.interpolate(align_corners=False) (samples 1/6, 3/2, 17/6)
    half = F.interpolate(row, size=(2, 3), mode="bilinear", align_corners=False)[0, 0, 0]
    torch.testing.assert_close(half, torch.tensor([5 / 3, 15.0, 85 / 3]))
    assert (down - half).abs().max() > 1


@pytest.mark.parametrize("shape, size", [((28, 28), (299, 299)), ((64, 48), (29, 31)), ((5, 7), (13, 6))])
def test_tf1_resize_matches_independent_formula(shape, size):
    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0)) * 255
    ours = resize_bilinear_tf1(x, size)
    expected = np.stack([[tf1_resize_numpy(c.double().numpy(), *size) for c in img] for img in x])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=2e-3)


# --- loading and its errors ------------------------------------------------------------------------
def test_environment_variable_names_the_file(files, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(files["safetensors"]))
    assert isinstance(load_inception(), FIDInceptionV3)


def test_no_weights_named(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(DgmError) as excinfo:
        load_inception()
    assert one_line_error(excinfo) == HOW_TO_GET == MISSING_WEIGHTS


def test_missing_file(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pth"
    for how in ("argument", "environment"):
        if how == "environment":
            monkeypatch.setenv(WEIGHTS_ENV, str(missing))
        with pytest.raises(DgmError) as excinfo:
            load_inception(missing if how == "argument" else None)
        message = one_line_error(excinfo)
        assert str(missing) in message and message.endswith(HOW_TO_GET)


def test_wrong_keys_and_shapes(tmp_path):
    state = random_inception_weights(seed=0)
    del state["fc.bias"], state["Mixed_7c.branch_pool.bn.running_var"]
    state["AuxLogits.fc.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(DgmError) as excinfo:
        load_inception(tmp_path / "other.pth")
    message = one_line_error(excinfo)
    assert "is not the pt_inception-2015-12-05 weights" in message
    assert "2 missing keys (Mixed_7c.branch_pool.bn.running_var, fc.bias)" in message
    assert "1 unexpected keys (AuxLogits.fc.weight)" in message
    assert "1 wrong shapes (fc.weight (1000, 2048) instead of (1008, 2048))" in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00not a weights file" * 10)
    with pytest.raises(DgmError) as excinfo:
        load_inception(path)
    message = one_line_error(excinfo)
    assert message.startswith(f"cannot read {path}: ") and "pt_inception-2015-12-05" in message


def test_pickled_code_is_refused_not_run(tmp_path):
    """The .pth is read with weights_only=True: an object whose unpickling would run code is refused."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    torch.save({"fc.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(DgmError) as excinfo:
        load_inception(tmp_path / "evil.pth")
    assert one_line_error(excinfo).startswith(f"cannot read {tmp_path / 'evil.pth'}: ")
    assert not marker.exists()


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(DgmError) as excinfo:
        load_inception(tmp_path / "list.pth")
    assert "holds a list, not a dict of named tensors" in one_line_error(excinfo)


def test_convert_to_safetensors(files, tmp_path):
    out = convert_to_safetensors(files["pth"], tmp_path / "sub" / "inception.safetensors")
    converted, original = load_file(str(out)), torch.load(files["pth"], weights_only=True)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    assert isinstance(load_inception(out), FIDInceptionV3)
