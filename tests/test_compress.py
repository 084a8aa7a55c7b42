"""``dgm compress`` / ``dgm decompress`` (dgm.apps.compress) on tiny VAE, VQ-VAE and DPLC runs: the
entropy coder against known rates, compress -> decompress giving back exactly the symbols and the
decoded images (one image, or many in one stream), the file's payload against the model's rate R,
the codecs' points, the curve, and one line for each bad input."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dgm import run
from dgm.apps.compress import (HEADER, SymbolDecoder, codec_points, compress, decode_symbols, decompress,
                               encode_symbols, gaussian_table, rate_bits, rate_distortion, read_images, to_8bit)
from dgm.cli import main
from dgm.errors import DgmError

TINY = ["--data", "digits", "--epochs", "2", "--quiet", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.max_examples=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    assert main(["train", "vae", *TINY, "--set", "model.hidden=16", "--set", "model.latent_dim=128",
                 "--out", str(root / "vae")]) == 0
    assert main(["train", "vqvae", *TINY, "--set", "model.num_codes=8", "--set", "model.code_dim=4",
                 "--set", "model.width=8", "--set", "model.num_res_blocks=1", "--set", "model.downsampling=2",
                 "--set", "model.prior_width=8", "--set", "model.prior_depth=1", "--set", "model.prior_heads=2",
                 "--set", "model.vqvae_epochs=1", "--out", str(root / "vqvae")]) == 0
    assert main(["train", "dplc", *TINY, "--set", "model.code_dim=6", "--set", "model.levels=5",
                 "--set", "model.width=4", "--set", "model.critic_width=4", "--out", str(root / "dplc")]) == 0
    assert main(["train", "ladder-vae", *TINY, "--set", "model.latent_dims=12,6", "--set", "model.hidden=16",
                 "--out", str(root / "ladder")]) == 0
    return root


@pytest.fixture(scope="module")
def models(runs):
    return {name: run.load(runs / name) for name in ("vae", "vqvae", "dplc", "ladder")}


def images_of(runs, n: int = 4, name: str = "vae") -> torch.Tensor:
    config, _ = run.read_config(runs / name)
    return run.load_data(config, "test").tensors(n).x


# --- the entropy coder ---------------------------------------------------------------------------------
def test_uniform_symbols_cost_their_bits_and_come_back():
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 256, 500)
    tables = np.ones((500, 256))
    assert rate_bits(symbols, tables) == pytest.approx(500 * 8)  # log2 256 bits each, exactly
    data = encode_symbols(symbols, tables)
    assert 500 <= len(data) <= 500 + 8  # the bytes themselves, plus at most ~2 words of coder state
    assert (decode_symbols(data, tables) == symbols).all()


def test_skewed_tables_decode_one_symbol_at_a_time():
    rng = np.random.default_rng(1)
    tables = rng.dirichlet(np.full(40, 0.2), size=300)
    symbols = np.array([rng.choice(40, p=p) for p in tables])
    R = rate_bits(symbols, tables)
    assert R == pytest.approx(-np.log2(tables[np.arange(300), symbols]).sum())
    data = encode_symbols(symbols, tables)
    assert abs(8 * len(data) - R) <= 0.03 * R
    decoder = SymbolDecoder(data)
    back = np.concatenate([decoder.decode(tables[i:i + 1]) for i in range(300)])  # as an autoregressive model does
    assert (back == symbols).all() and decoder.finished()


def test_gaussian_table_is_the_prior_mass_of_each_bin():
    table = gaussian_table(1.0)  # bins [s - 1/2, s + 1/2], s = -6..6
    assert len(table) == 13 and table.sum().item() == pytest.approx(1.0, abs=1e-15)
    Phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    assert table[6].item() == pytest.approx(Phi(0.5) - Phi(-0.5), rel=1e-12)  # 0.3829...
    assert table[8].item() == pytest.approx(Phi(2.5) - Phi(1.5), rel=1e-12)
    assert table[0].item() == pytest.approx(Phi(-5.5), rel=1e-9)  # the end bin takes the tail
    fine = gaussian_table(0.01)  # a small step: the mass of a bin is ~ step * phi(s step)
    assert fine[600].item() == pytest.approx(0.01 / math.sqrt(2 * math.pi), rel=1e-4)


# --- compress -> decompress -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, step", [("vae", 0.01), ("vae", 0.5), ("vqvae", 1.0)])
def test_roundtrip_is_exact_and_the_file_is_the_rate(runs, models, name, step):
    model = models[name]
    x = images_of(runs)
    for i in range(len(x)):
        c = compress(model, x[i:i + 1], step=step)
        symbols, image = decompress(model, c.data)
        assert torch.equal(symbols, c.symbols)
        assert torch.equal(image, c.reconstruction)  # bit-exact
        assert -2 <= c.payload_bits - c.rate <= 40  # an ideal coder's R, plus at most ~16 bits of state and a byte
        if name == "vqvae":  # the tables one position at a time are the prior's teacher-forced ones
            assert c.rate == pytest.approx(model.code_bits(x[i:i + 1]).item(), abs=1e-3)
        if c.rate > 800:
            assert abs(c.payload_bits - c.rate) <= 0.03 * c.rate
    assert len(c.symbols) == (128 if name == "vae" else 16)  # latent_dim, or the 4x4 code grid


def test_a_finer_step_costs_more_bits_and_gives_a_closer_image(runs, models):
    points = rate_distortion(models["vae"], images_of(runs, 3), steps=(1.0, 0.1, 0.01))
    rates = [p["rate"] for p in points]
    assert rates[0] < rates[1] < rates[2]
    assert points[-1]["mse"] <= points[0]["mse"] + 1e-3
    for p in points:
        assert p["file"] == pytest.approx(p["payload"] + 8 * HEADER.size)


def test_the_cli_writes_and_reads_the_bytes(runs, models, tmp_path, capsys):
    model = models["vae"]
    x = images_of(runs, 1)
    picture = tmp_path / "digit.png"
    Image.fromarray(to_8bit(x, model.spec)[0]).save(picture)
    assert main(["compress", str(runs / "vae"), str(picture), "--step", "0.05", "-o", str(tmp_path / "d.dgm")]) == 0
    assert "128 symbols" in capsys.readouterr().out
    data = (tmp_path / "d.dgm").read_bytes()
    c = compress(model, x, step=0.05)  # the picture is the test image's 8-bit levels: the same code
    assert data == c.data
    assert main(["decompress", str(runs / "vae"), str(tmp_path / "d.dgm"), "-o", str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert (np.asarray(im) == to_8bit(c.reconstruction, model.spec)[0]).all()


def test_the_curve_is_plotted(runs, tmp_path, capsys):
    out = tmp_path / "rd.png"
    assert main(["compress", str(runs / "vae"), "--curve", "--steps", "1,0.25", "-n", "3", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 points of vae" in said and "at the same MSE: WebP" in said
    with Image.open(out) as im:
        width = im.width
        assert width > 100
    assert main(["compress", str(runs / "vae"), "--curve", "--steps", "1", "-n", "4", "--fid", "digits-net",
                 "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.width > 1.5 * width  # the rate-FID panel beside the rate-MSE one


# --- the codecs -----------------------------------------------------------------------------------------
def test_codec_points_are_the_real_files():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    points = {label: (bits, error) for label, bits, error in
              codec_points(images, (("PNG", None), ("JPEG", 5), ("JPEG", 95), ("WebP", 50)))}
    assert points["PNG"][1] == 0.0  # lossless
    sizes = []
    for a in images:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="PNG")
        sizes.append(8 * len(buffer.getvalue()))
    assert points["PNG"][0] == pytest.approx(np.mean(sizes))
    assert points["JPEG q95"][1] < points["JPEG q5"][1]
    assert points["WebP q50"][1] > 0


def test_a_downscaled_codec_codes_the_small_picture_and_scores_the_upscaled_one():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    [(label, bits, error)] = codec_points(images, (("PNG", None, 2),))
    assert label == "PNG @1/2"
    sizes, errors = [], []
    for a in images:  # lossless on the 4x4 picture: the error is all in the resizing
        small = Image.fromarray(a).resize((4, 4), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, format="PNG")
        sizes.append(8 * len(buffer.getvalue()))
        back = np.asarray(small.resize((8, 8), Image.Resampling.BICUBIC)).astype(float)
        errors.append((((back - a) / 255) ** 2).mean())
    assert bits == pytest.approx(np.mean(sizes)) and error == pytest.approx(np.mean(errors), rel=1e-12) and error > 0


def test_codec_bits_at_equal_distortion_interpolate_its_frontier():
    from dgm.apps.compress import codec_bits_at

    codecs = [("WebP q5", 100.0, 0.1), ("WebP q50", 1000.0, 0.01), ("WebP q9 @1/2", 500.0, 0.2),  # dominated
              ("JPEG q5", 3000.0, 0.02), ("PNG", 4000.0, 0.0)]
    assert codec_bits_at(codecs, "WebP", 0.1 / math.sqrt(10)) == pytest.approx(100 * math.sqrt(10))  # log-log middle
    assert codec_bits_at(codecs, "WebP", 0.1) == pytest.approx(100.0)
    assert codec_bits_at(codecs, "WebP", 0.15) is None and codec_bits_at(codecs, "WebP", 0.005) is None  # outside
    assert codec_bits_at(codecs, "JPEG", 0.02) == 3000.0 and codec_bits_at(codecs, "JPEG", 0.03) is None
    assert codec_bits_at(codecs, "PNG", 0.01) is None  # lossless: no distortion to match


# --- a hierarchical VAE (ladder), coded top-down (eq. 4) -------------------------------------------------
def test_ladder_roundtrip_is_exact_and_a_fine_step_gives_the_mean_pass(runs, models):
    from dgm.apps.compress import BOUND, ladder_code

    model = models["ladder"]
    x = images_of(runs, 5, "ladder")
    for step, layers in ((0.5, None), (0.05, None), (0.5, 1)):
        c = compress(model, x, step=step, layers=layers)
        symbols, images = decompress(model, c.data)
        assert torch.equal(symbols, c.symbols) and torch.equal(images, c.reconstruction)  # bit-exact
        assert len(c.symbols) == 5 * (18 if layers is None else 6)  # 12 + 6 units, or the top layer's 6
        assert -2 <= c.payload_bits - c.rate <= 40
        S = math.ceil(BOUND / step)
        table = gaussian_table(step)
        assert c.rate == pytest.approx(-torch.log2(table[c.symbols]).sum().item(), rel=1e-7)  # eq. (2)'s masses
    # the top layer is the VAE's code: round(mu_q,L / step); a tiny step reproduces the mean top-down pass
    top = model.encode(x)[:, 12:]
    assert torch.equal(compress(model, x, step=0.5, layers=1).symbols.view(5, 6),
                       (top.double() / 0.5).round().clamp(-S, S).long() + S)
    fine = ladder_code(model, 1e-3, 2, x=x)[1]
    assert torch.allclose(fine, model.decode(model.encode(x)), atol=1e-3)
    # conceptual: the layer below from its prior's mean given the top layer's decode
    with torch.inference_mode(), model.evaluating():
        z2 = ((compress(model, x, step=0.5, layers=1).symbols.view(5, 6) - S).double() * 0.5).float()
        expected = model.likelihood.mean(model.decoder_params(model.prior(0, z2)[0]))
    assert torch.allclose(compress(model, x, step=0.5, layers=1).reconstruction, expected, atol=1e-6)
    coarse, finer = (rate_distortion(model, x, steps=(s,))[0] for s in (1.0, 0.05))
    assert coarse["rate"] < finer["rate"]


def test_ladder_through_the_cli(runs, models, tmp_path, capsys):
    assert main(["compress", str(runs / "ladder"), "test:0-3", "--step", "0.5", "--layers", "1",
                 "-o", str(tmp_path / "l.dgm")]) == 0
    assert "4 pictures, 24 symbols" in capsys.readouterr().out
    c = compress(models["ladder"], images_of(runs, 4, "ladder"), step=0.5, layers=1)
    assert (tmp_path / "l.dgm").read_bytes() == c.data
    assert main(["decompress", str(runs / "ladder"), str(tmp_path / "l.dgm")]) == 0
    with Image.open(tmp_path / "l-0003.png") as im:
        assert (np.asarray(im) == to_8bit(c.reconstruction, models["ladder"].spec)[3]).all()
    one_line_error(capsys, ["compress", str(runs / "ladder"), "test:0", "--layers", "3"], "--layers takes how many")
    one_line_error(capsys, ["compress", str(runs / "vae"), "test:0", "--layers", "1"], "drop --layers")
    bad = bytearray(c.data)
    bad[6] = 7  # the header's layers
    (tmp_path / "bad.dgm").write_bytes(bytes(bad))
    one_line_error(capsys, ["decompress", str(runs / "ladder"), str(tmp_path / "bad.dgm")], "latent layers coded")


# --- bad inputs: one line each ------------------------------------------------------------------------
def one_line_error(capsys, argv, says):  # noqa: ANN001
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dgm: error:") and says in err and "\n" not in err, err


def test_bad_inputs_are_one_line(runs, models, tmp_path, capsys):
    vae, vqvae = str(runs / "vae"), str(runs / "vqvae")
    one_line_error(capsys, ["decompress", vae, str(tmp_path / "missing.dgm")], "does not exist")
    one_line_error(capsys, ["compress", vae, str(tmp_path / "missing.png")], "does not exist")
    Image.new("L", (5, 5)).save(tmp_path / "small.png")
    one_line_error(capsys, ["compress", vae, str(tmp_path / "small.png")], "the model makes 8x8 images")
    (tmp_path / "text.dgm").write_bytes(b"not a dgm file at all, honestly")
    one_line_error(capsys, ["decompress", vae, str(tmp_path / "text.dgm")], "not a file written by dgm compress")
    one_line_error(capsys, ["compress", vae, "--curve", "--steps", "1,x"], "--steps takes numbers")
    one_line_error(capsys, ["compress", vae, "--curve", "--steps", "0.0001"], "--step must be")
    x = images_of(runs, 1)
    c = compress(models["vae"], x, step=0.1)
    (tmp_path / "v.dgm").write_bytes(c.data)
    one_line_error(capsys, ["decompress", vqvae, str(tmp_path / "v.dgm")], "decompress with the run that compressed it")
    corrupt = bytearray(c.data)
    corrupt[HEADER.size + 3] ^= 0x5A
    (tmp_path / "c.dgm").write_bytes(bytes(corrupt))
    one_line_error(capsys, ["decompress", vae, str(tmp_path / "c.dgm")], "corrupt")
    other = bytearray(c.data)
    other[HEADER.size - 5] ^= 1  # the weights' checksum
    with pytest.raises(DgmError, match="other weights"):
        decompress(models["vae"], bytes(other))
    count = bytearray(c.data)
    count[HEADER.size - 1] ^= 1  # the number of images: 2^24 + 1
    with pytest.raises(DgmError, match="it says 16777217 images, the data ends after 1"):
        decompress(models["vae"], bytes(count))


def test_a_test_example_by_its_index(runs, tmp_path, capsys):
    out = tmp_path / "t.dgm"
    assert main(["compress", str(runs / "vqvae"), "test:3", "-o", str(out)]) == 0
    assert "16 symbols" in capsys.readouterr().out
    assert main(["decompress", str(runs / "vqvae"), str(out)]) == 0
    with Image.open(tmp_path / "t.png") as im:
        assert im.size == (8, 8)
    one_line_error(capsys, ["compress", str(runs / "vqvae"), "test:99999"], "test:K takes the index")


def test_only_models_with_an_entropy_model_for_their_latents_get_the_apps():
    from dgm.apps import APPS, apps_for
    from dgm.models.base import model_class

    names = {cls.name for cls in (model_class(n) for n in ("vae", "vqvae", "beta-tc-vae", "ladder-vae", "ddpm",
                                                            "dplc", "conv-draw"))
             if APPS["compress"] in apps_for(cls)}
    assert names == {"vae", "vqvae", "beta-tc-vae", "ladder-vae", "dplc"}  # dplc by quantize/dequantize


# --- many images in one stream ------------------------------------------------------------------------
@pytest.mark.parametrize("name, n, step", [("vae", 60, 0.5), ("vqvae", 5, 1.0), ("dplc", 60, 1.0)])
def test_many_images_in_one_stream_cost_their_summed_rate(runs, models, name, n, step):
    model = models[name]
    x = images_of(runs, n, name)
    assert len(x) == n
    c = compress(model, x, step=step)
    assert HEADER.unpack_from(c.data)[-1] == n  # the count in the one header
    singles = [compress(model, x[i:i + 1], step=step) for i in range(n)]
    assert torch.equal(c.symbols, torch.cat([s.symbols for s in singles]))  # image 0's symbols first
    assert c.rate == pytest.approx(sum(s.rate for s in singles), rel=1e-9)  # R summed over the images
    symbols, images = decompress(model, c.data)
    assert torch.equal(symbols, c.symbols) and images.shape == (n, *model.spec.shape)
    assert torch.equal(images, c.reconstruction)  # bit-exact, every image
    for i in (0, n - 1):  # the batch decodes each image as a stream of its own would (up to float rounding)
        assert torch.allclose(images[i:i + 1], singles[i].reconstruction, atol=1e-5)
    assert -2 <= c.payload_bits - c.rate <= 40  # the coder's constant paid once, not n times
    if name == "vae":  # ~7000 bits of a realistic rate: within a few percent
        assert c.rate > 800 and abs(c.payload_bits - c.rate) <= 0.03 * c.rate
    if name != "vqvae":
        assert c.payload_bits < sum(s.payload_bits for s in singles) - 8 * (n - 1)  # amortised
    if name == "dplc":  # uniform tables: exactly the model's fixed rate m log2 L per image
        assert c.rate == pytest.approx(n * 6 * math.log2(5), rel=1e-12)
        assert c.rate == pytest.approx(model.code_bits(x).sum().item(), rel=1e-6)
        assert torch.equal(images, model.dequantize(model.quantize(x)))


def test_the_cli_codes_a_range_and_a_folder_into_one_file(runs, models, tmp_path, capsys):
    model = models["vae"]
    assert main(["compress", str(runs / "vae"), "test:0-9", "--step", "0.5", "-o", str(tmp_path / "b.dgm")]) == 0
    assert "10 pictures, 1280 symbols" in capsys.readouterr().out
    data = (tmp_path / "b.dgm").read_bytes()
    x = read_images("test:0-9", model, str(runs / "vae"))  # test:A-B is test:A, ..., test:B
    assert torch.equal(x, torch.cat([read_images(f"test:{k}", model, str(runs / "vae")) for k in range(10)]))
    c = compress(model, x, step=0.5)
    assert data == c.data
    assert main(["decompress", str(runs / "vae"), str(tmp_path / "b.dgm"), "-o", str(tmp_path / "out.png")]) == 0
    pictures = to_8bit(c.reconstruction, model.spec)
    for i in range(10):
        with Image.open(tmp_path / f"out-{i:04d}.png") as im:
            assert (np.asarray(im) == pictures[i]).all()
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out-0010.png").exists()
    folder = tmp_path / "pictures"
    folder.mkdir()
    originals = to_8bit(images_of(runs, 3), model.spec)
    for i, a in enumerate(originals):
        Image.fromarray(a).save(folder / f"{i}.png")
    assert main(["compress", str(runs / "vae"), str(folder), "--step", "0.5", "-o", str(tmp_path / "f.dgm")]) == 0
    assert (tmp_path / "f.dgm").read_bytes() == compress(model, images_of(runs, 3), step=0.5).data
    one_line_error(capsys, ["compress", str(runs / "vae"), "test:5-2"], "test:A-B a range")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["compress", str(runs / "vae"), str(tmp_path / "empty")], "has no .png pictures")


def test_dplc_through_the_cli(runs, models, tmp_path, capsys):
    model = models["dplc"]
    assert main(["compress", str(runs / "dplc"), "test:3", "-o", str(tmp_path / "d.dgm")]) == 0
    assert "6 symbols" in capsys.readouterr().out
    x = images_of(runs, 4, "dplc")[3:4]
    c = compress(model, x)
    assert (tmp_path / "d.dgm").read_bytes() == c.data
    assert -2 <= c.payload_bits - 6 * math.log2(5) <= 40
    assert main(["decompress", str(runs / "dplc"), str(tmp_path / "d.dgm")]) == 0
    with Image.open(tmp_path / "d.png") as im:
        assert (np.asarray(im) == to_8bit(model.dequantize(model.quantize(x)), model.spec)[0]).all()
    one_line_error(capsys, ["decompress", str(runs / "vae"), str(tmp_path / "d.dgm")],
                   "decompress with the run that compressed it")


def test_fid_of_the_decoded_pictures(runs, models, tmp_path):
    """rate_distortion and codec_points hand their decoded 8-bit pictures (in [0, 1]) to ``fid``; the plot
    gets a second (rate-FID) panel."""
    from dgm.apps.compress import from_8bit, plot_curves

    seen = []

    def fid(images):
        seen.append(images)
        return float(len(seen))

    model, x = models["vae"], images_of(runs, 2)
    points = rate_distortion(model, x, steps=(0.5,), fid=fid)
    expected = torch.cat([from_8bit(to_8bit(compress(model, x[i:i + 1], step=0.5).reconstruction, model.spec))
                          for i in range(2)])
    assert points[0]["fid"] == 1.0 and torch.equal(seen[0], expected) and seen[0].shape == (2, 1, 8, 8)
    original = to_8bit(x, model.spec)
    codecs = codec_points(original, (("PNG", None),), fid=fid)
    assert codecs[0][3] == 2.0 and torch.equal(seen[1], from_8bit(original))  # lossless: the originals
    assert torch.equal(from_8bit(original), torch.from_numpy(original)[:, None].float() / 255)
    one = plot_curves({"vae": [{k: v for k, v in p.items() if k != "fid"} for p in points]}, codecs[:0],
                      tmp_path / "one.png")
    two = plot_curves({"vae": points}, codecs, tmp_path / "two.png")
    with Image.open(one) as a, Image.open(two) as b:
        assert b.width > 1.5 * a.width  # two panels side by side


@pytest.mark.parametrize("name", ["vae", "vqvae", "dplc"])
def test_the_report_figure_shows_the_decodes_of_the_bytes(runs, models, name):
    from dgm.apps import APPS
    from dgm.apps.compress import REPORT_IMAGES, REPORT_STEPS

    model = models[name]
    x = images_of(runs, 10, name)
    [(title, pictures, columns, caption), (_, chart, _, chart_caption)] = APPS["compress"].report_figures(model, x)
    assert isinstance(chart, Image.Image) and chart.width > 200 and "at the same MSE" in chart_caption
    rows = 1 + (len(REPORT_STEPS) if name == "vae" else 1)
    assert columns == REPORT_IMAGES and pictures.shape == (rows * REPORT_IMAGES, *model.spec.shape)
    assert torch.equal(pictures[:REPORT_IMAGES], x[:REPORT_IMAGES])
    step = REPORT_STEPS[-1] if name == "vae" else 1.0
    c = compress(model, x[:REPORT_IMAGES], step=step)
    assert torch.equal(pictures[-REPORT_IMAGES:], c.reconstruction)  # the last row: what decompress gives
    assert f"R {c.rate / REPORT_IMAGES:.0f} bits/image" in caption
