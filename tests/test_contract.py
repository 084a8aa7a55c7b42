"""One contract every registered model passes (docs/architecture.md, "Add a family in one file"): a
finite loss in every phase, gradients that reach every parameter, samples of the data's shape, a
save/load round trip through safetensors, seeded determinism, declared capabilities that actually
work, and generation without autograd."""
from __future__ import annotations

import pytest
import torch

from conftest import captioned_blobs, image_dataset
from dgm.models import MODELS, Progress, capabilities, create
from dgm.models.base import config_to_json, make_config
from dgm.train import checkpoint as ckpt

#: small settings per registered model; a new family adds its line here
GAN_TINY = {"latent_dim": 3, "hidden": (16, 16), "width": 4}
TINY = {
    "vae": {"latent_dim": 3, "hidden": (16,)},
    **{name: GAN_TINY for name in ("gan", "wgan", "wgan-gp", "lsgan", "sngan", "cgan", "acgan", "bigan", "ali")},
    "pacgan": {**GAN_TINY, "pack": 2},  # the tests' batches (16, 4) are multiples of 2
    "infogan": {**GAN_TINY, "categorical_codes": 3, "continuous_codes": 2},
    "self-labelling-gan": {**GAN_TINY, "threshold": 0.2},  # 4 classes: a low bound, so some self-labels are used
    "ddpm": {"timesteps": 10, "width": 8, "channel_mults": (1, 2), "sample_steps": 4},
    "nade": {"hidden": 8},
    "made": {"hidden": (16, 16), "num_masks": 2, "order_agnostic": True},
    "pixelcnn": {"width": 4, "layers": 1},
    "gated-pixelcnn": {"width": 4, "layers": 2, "kernel_size": 3, "conditional": True, "noise_levels": 2},
    "pixelrnn": {"width": 4, "layers": 1},
    "image-transformer": {"width": 8, "depth": 1, "heads": 2},
    "dct-transformer": {"width": 8, "depth": 1, "heads": 2, "quality": 0, "max_length": 64, "conditional": True},
    "nice": {"couplings": 2, "hidden": (8,)},
    "realnvp": {"scales": 2, "width": 4, "blocks": 1},
    "glow": {"levels": 2, "steps": 1, "width": 4, "dequantization": "variational", "dequantizer_couplings": 1,
             "dequantizer_width": 4},
    "maf": {"transforms": 2, "hidden": (16,)},
    "iaf": {"transforms": 2, "hidden": (16,)},
    "spline-flow": {"transforms": 2, "hidden": (8,), "bins": 3},
    "set-flow": {"couplings": 2, "width": 8, "heads": 2, "blocks": 1},
    "cvae": {"latent_dim": 3, "hidden": (16,)},
    "ppca": {"latent_dim": 3},
    "fa": {"latent_dim": 3, "max_iter": 5},
    "gmm": {"components": 2, "max_iter": 5},
    "m2": {"latent_dim": 3, "hidden": (16,)},
    "ps-vae": {"latent_dim": 3, "hidden": (16,), "samples": 2},
    "m1m2": {"latent_dim": 2, "hidden": (8,), "m1_latent_dim": 3, "m1_hidden": (16,), "m1_epochs": 1},
    "csvae": {"latent_dim": 3, "w_dim": 2, "hidden": (16,), "adversary_hidden": (8,)},
    "beta-tc-vae": {"latent_dim": 3, "hidden": (16,)},
    "ladder-vae": {"latent_dims": (4, 3), "hidden": (16,)},
    "iaf-vae": {"latent_dim": 3, "hidden": (16,), "iaf_hidden": (8,), "context_dim": 4},
    "pixel-vae": {"latent_dim": 3, "hidden": (16,), "pixel_width": 4, "pixel_layers": 2},
    "lstm-lm": {"width": 8, "hidden": 16, "layers": 2},
    "transformer-lm": {"width": 8, "depth": 1, "heads": 2},
    "sentence-vae": {"latent_dim": 3, "width": 8, "hidden": 16},
    "outline-gan": {"embed_dim": 4, "width": 8, "encoder_hidden": 8, "decoder_hidden": 16, "noise_dim": 3,
                    "hidden": (16,), "critic_steps": 2, "autoencoder_epochs": 1},
    "prodlda": {"topics": 3, "vocab_size": 16, "hidden": (16,)},
    "vqvae": {"num_codes": 8, "code_dim": 4, "width": 8, "num_res_blocks": 1, "downsampling": 2, "prior_width": 8,
              "prior_depth": 1, "prior_heads": 2, "vqvae_epochs": 1},
    "idvae": {"latent_dim": 3, "hidden": (16,), "prior_hidden": (8,), "auxiliary": "labels"},
    "dalle": {"num_codes": 8, "code_dim": 4, "tokenizer_width": 8, "downsampling": 2, "width": 16, "depth": 2,
              "heads": 2, "reranker_width": 8, "reranker_dim": 8, "tokenizer_epochs": 1, "conv_kernel": 3},
    "constrained-vae": {"latent_dim": 3, "hidden": (16,), "examples": 4, "proposals": 4, "constraint_hidden": 8},
    "constrained-lm": {"width": 8, "hidden": 16, "layers": 1, "template": "^the ", "examples": 4, "proposals": 4,
                       "constraint_hidden": 8},
    "voxel-vae": {"latent_dim": 3, "width": 4, "observe": "views", "views": (0.0, 90.0)},
    "aligndraw": {"steps": 2, "latent_dim": 3, "hidden": 8, "embed_dim": 4, "caption_hidden": 4, "align_dim": 4,
                  "read_size": 2, "write_size": 2},
    "ddc-hm": {"latent_dims": (4, 3), "latents": "mixed", "features": 8, "hidden": (16,), "sleep_samples": 8,
               "readout_samples": 16},
    "rws": {"latent_dims": (4, 3), "latents": "mixed", "hidden": (8,), "samples": 3},
    "conv-draw": {"steps": 2, "latent_channels": 2, "hidden": 4, "width": 4},
    "dplc": {"code_dim": 3, "levels": 3, "width": 4, "critic_width": 4, "critic_steps": 2},
    "mdn-rnn": {"layers": 2, "hidden": 8, "components": 2},
    "wavenet": {"residual_channels": 4, "gate_channels": 4, "skip_channels": 4, "dilation_depth": 2, "stacks": 2,
                "conditional": True, "condition_dim": 3, "crop": 8},
}
#: models that read another kind of data than the labelled images the contract uses
POINT_SET_MODELS = {"set-flow"}
VOLUME_MODELS = {"voxel-vae"}  # voxel volumes (dgm.data.voxels)
AUDIO_MODELS = {"wavenet"}  # mu-law audio clips (dgm.data.audio)
TOKEN_MODELS = {"lstm-lm", "transformer-lm", "sentence-vae", "outline-gan", "prodlda", "constrained-lm"}
#: models that draw images from captions: the labelled images, captioned by class names of 1 to 3 words
CAPTION_MODELS = {"dalle", "aligndraw"}
STROKE_MODELS = {"mdn-rnn"}  # pen strokes: 8 Hershey glyphs in tests/data/glyphs.jhf, augmented


def token_dataset():
    """65 short byte sequences padded to 32 tokens, with their lengths (the masks of the batches)."""
    from dgm.data.core import Dataset, DataSpec
    from dgm.data.sequences import pack

    lines = [b"hello world", b"the quick brown fox", b"jumps over", b"a", b"the lazy dog"] * 13
    x, lengths = pack(lines, 32)
    spec = DataSpec("lines", (32,), "levels", levels=256, kind="tokens")
    return Dataset(torch.from_numpy(x), None, spec, train=True, lengths=torch.from_numpy(lengths))


def audio_dataset():
    """64 labelled clips of 24 mu-law codes: sines of 3 pitches (the labels), as spoken-digits holds words."""
    from dgm.data.audio import mu_law_encode
    from dgm.data.core import Dataset, DataSpec

    y = torch.arange(64) % 3
    t = torch.arange(24)
    x = mu_law_encode(0.5 * torch.sin(2 * torch.pi * (y[:, None] + 1) * t / 24)).to(torch.uint8)
    spec = DataSpec("tones", (24,), "levels", levels=256, num_classes=3, kind="audio", extras={"sample_rate": 8000})
    return Dataset(x, y, spec, train=True)


MODEL_NAMES = sorted(n for n in MODELS if not n.startswith("test-"))


def test_every_model_has_a_tiny_config():
    assert set(MODEL_NAMES) <= set(TINY), f"add tiny settings for {set(MODEL_NAMES) - set(TINY)} to TINY"


def build(name: str):
    cls = MODELS[name]
    config = make_config(cls, TINY[name])
    if name in TOKEN_MODELS:
        data = token_dataset()
    elif name in CAPTION_MODELS:
        data = captioned_blobs()
    elif name in POINT_SET_MODELS:
        from dgm.data import load

        data = load("shapes2d", "test").subset(64)
    elif name in AUDIO_MODELS:
        data = audio_dataset()
    elif name in STROKE_MODELS:
        from pathlib import Path

        from dgm.data import load

        data = load(f"strokes:{Path(__file__).parent / 'data' / 'glyphs.jhf'}").subset(64)
    elif name in VOLUME_MODELS:
        from dgm.data import load

        data = load("voxels", "test").subset(64)
    else:
        data = image_dataset(n=64, labels=True)  # labelled, for the class-conditional models
    data = data.with_representation(cls.default_representation(config, data.spec))
    torch.manual_seed(0)
    model = cls(config, data.spec)
    model.prepare(data)  # as the trainer does on a fresh run (a vocabulary, a tokenizer)
    return model, data


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_is_finite_and_gradients_reach_every_parameter(name):
    model, data = build(name)
    batch = data.tensors(16)
    reached = set()
    for phase in model.phases():
        model.zero_grad()
        out = model.loss(batch, phase.name, Progress())
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        # connected to the loss; a gradient may still be exactly 0 by symmetry at this point (the
        # hinge loss's score bias gets +1 from fakes and -1 from reals while both scores are in (-1, 1))
        reached |= {id(p) for p in phase.parameters if p.grad is not None}
        assert sum(p.grad.abs().sum() for p in phase.parameters if p.grad is not None) > 0, phase.name
    unreached = [n for n, p in model.named_parameters() if id(p) not in reached]
    assert not unreached, f"no phase's loss reaches {unreached}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_model_trains_in_the_memory_format_it_asks_for(name):
    """train.memory_format=auto puts the model in ``memory_format()``: its weights must take that
    layout (channels_last is for 4-D weights; a 3-D conv net's 5-D weights refuse it)."""
    model, data = build(name)
    model.to(memory_format=model.memory_format())
    out = model.loss(data.tensors(8), model.phases()[0].name, Progress())
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sample_shape_save_load_and_determinism(name, tmp_path):
    model, data = build(name)
    model.eval()
    with torch.no_grad():
        x = model.sample(5, generator=torch.Generator().manual_seed(1))
        again = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, *data.spec.shape)
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    ckpt.save_tensors(model.state_dict(), tmp_path / "w.safetensors")
    rebuilt = make_config(MODELS[name], config_to_json(model.config))  # the config round-trips too
    clone = MODELS[name](rebuilt, data.spec).eval()
    ckpt.load_state_dict_checked(clone, ckpt.load_tensors(tmp_path / "w.safetensors"), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(clone.sample(5, generator=torch.Generator().manual_seed(1)), x, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_declared_capabilities_work(name):
    model, data = build(name)
    model.eval()
    x = data.tensors(4).x
    have = capabilities(model)
    with torch.no_grad():
        for bound in ("log_prob", "elbo"):
            if bound in have:
                assert getattr(model, bound)(x).shape == (4,)
        if "iwae_bound" in have:
            assert model.iwae_bound(x, 3).shape == (4,)
        if "kl_per_dim" in have:
            assert (model.kl_per_dim(x) >= 0).all()
        if "encode" in have:
            z = model.encode(x)
            assert z.shape[0] == 4
            if "decode" in have:
                assert model.decode(z).shape == x.shape


def test_create_checks_names_and_settings():
    from dgm.errors import DgmError

    spec = image_dataset(n=8).spec
    with pytest.raises(DgmError, match="did you mean 'vae'"):
        create("vea", spec)
    with pytest.raises(DgmError, match="latent_dim"):
        create("vae", spec, latent_dims=3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_generation_runs_without_autograd_and_returns_plain_tensors(name):
    """sample / preview_sample / report_figures of every model run under inference mode (no graph
    is built, so a long chain keeps no activations) and hand back ordinary tensors without a graph,
    which may still be fed to a network that is being trained."""
    model, _ = build(name)
    model.eval()
    assert any(p.requires_grad for p in model.parameters())
    seen = []
    for module in model.modules():  # every layer that generation runs records the autograd mode
        module.register_forward_hook(lambda *_: seen.append((torch.is_grad_enabled(),
                                                             torch.is_inference_mode_enabled())))
    outputs = [model.sample(3, generator=torch.Generator().manual_seed(0)),
               model.preview_sample(3, generator=torch.Generator().manual_seed(0))]
    figures = model.report_figures(generator=torch.Generator().manual_seed(0))
    outputs += [images for _, images, _, _ in figures if not isinstance(images, str)]  # a str is a text figure
    assert seen and all(mode == (False, True) for mode in seen), seen
    for x in outputs:
        assert x.grad_fn is None and not x.requires_grad and not x.is_inference()
    (torch.nn.Linear(x[0].numel(), 1)(x.flatten(1).float())).sum().backward()  # usable in training


def _ranges(hint) -> list:  # noqa: ANN001
    """The Range annotations inside a config field's type (through Optional and tuples)."""
    from typing import Annotated, get_args, get_origin

    from dgm.settings import Range

    if get_origin(hint) is Annotated:
        return [m for m in get_args(hint)[1:] if isinstance(m, Range)] + _ranges(get_args(hint)[0])
    return [r for a in get_args(hint) for r in _ranges(a)]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_bounded_numeric_setting_refuses_a_value_below_its_range(name):
    """Every numeric setting of every model states its range; a value below it (zero for a count,
    a negative scale) is refused with one line naming the setting, before anything is built."""
    import dataclasses

    from dgm.errors import DgmError
    from dgm.settings import type_hints

    cls = MODELS[name]
    hints = type_hints(cls.Config)
    for f in dataclasses.fields(cls.Config):
        numeric = isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
        assert _ranges(hints[f.name]) or not numeric, f"model.{f.name} of {name} states no range"
        bounded = [r for r in _ranges(hints[f.name]) if r.low is not None]
        if not bounded:
            continue
        low = bounded[0].low
        bad = low - 1 if not bounded[0].low_open else low  # just outside the range
        value = (bad,) if isinstance(f.default, tuple) else bad
        with pytest.raises(DgmError, match=f"model.{f.name}"):
            make_config(cls, {f.name: value})
