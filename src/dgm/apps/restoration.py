"""Image restoration with a trained model: from the user's picture files to a known view.

Three tasks, one idea (:mod:`dgm.models.samplers`): a linear view of the image is known and the
model generates the rest.

* ``inpaint``: ``--input`` is the image, ``--mask`` a picture of the same size whose white pixels are
  to be generated (the convention of image editors and diffusers); black pixels are kept exactly;
* ``super-resolution``: ``--input`` is a low-resolution image whose sides divide the model's; the
  block means of the result equal it;
* ``colorize``: ``--input`` is a grey image of the model's size; the channel mean of the result
  equals it (a colour model only).

Pictures are read as they are (no resizing), so a wrong size or number of channels gets one line
saying what to give instead.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dgm.data.core import BINARY_REPRESENTATIONS, DataSpec
from dgm.errors import DgmError
from dgm.apps import App, register_app
from dgm.apps.options import POSITIVE, add_sampler_flags, output_path, sampler_options
from dgm.models.samplers import Colorization, Inpaint, KnownView, SuperResolution

TASKS: tuple[str, ...] = ("inpaint", "super-resolution", "colorize")


def read_picture(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise DgmError(f"picture {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DgmError(f"cannot read picture {path}: {e}") from None


def has_colour(im: Image.Image) -> bool:
    if im.mode in ("L", "1", "LA", "I", "F"):
        return False
    rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool((rgb != rgb[..., :1]).any())


def to_model_values(im: Image.Image, channels: int, spec: DataSpec) -> Tensor:
    """The 8-bit picture as ``(1, channels, H, W)`` values in the model's representation, on the
    model's grid of ``spec.levels`` levels (binarized models: the nearest of 0 and 1)."""
    from dgm.nn.likelihoods import from_levels

    a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float64) / 255.0
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if spec.representation in BINARY_REPRESENTATIONS:
        return torch.from_numpy(np.rint(a)).float()[None]
    levels = torch.from_numpy(np.rint(a * (spec.levels - 1))).long()[None]  # the nearest of the model's levels
    return from_levels(levels, spec) if spec.representation == "levels" else from_levels(levels.double(), spec).float()


def picture_of(task: str, image: Tensor) -> Image.Image:
    """What a user would give for ``task`` when restoring the image ``(C, H, W)`` of 0..255 values (a test
    example, ``--input test:K``): the image itself to inpaint, its 2x block means to super-resolve,
    its grey version to colorize."""
    x = image.float()
    if task == "super-resolution":
        x = torch.nn.functional.avg_pool2d(x[None], 2)[0]
    elif task == "colorize":
        x = x.mean(0, keepdim=True)
    a = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))


def centre_mask(height: int, width: int) -> Tensor:
    """``(1, 1, H, W)``, true outside the central square of half the side (kept), false inside."""
    keep = torch.ones(1, 1, height, width, dtype=torch.bool)
    keep[..., height // 4:height // 4 + height // 2, width // 4:width // 4 + width // 2] = False
    return keep


def bottom_mask(height: int, width: int) -> Tensor:
    """``(1, 1, H, W)``, true on the top half (kept), false on the bottom half (generated): the
    completion an autoregressive model does exactly, since the known pixels all come first."""
    keep = torch.zeros(1, 1, height, width, dtype=torch.bool)
    keep[..., :height // 2, :] = True
    return keep


#: the masks named on the command line instead of a picture (``--mask NAME``)
NAMED_MASKS = {"centre": centre_mask, "bottom": bottom_mask}


def known_view(task: str, spec: DataSpec, input_path: str | Path | Image.Image, mask_path: str | Path | None = None,
               *, copies: int = 1) -> KnownView:
    """The known view for ``task`` from the user's files (or a picture), repeated ``copies`` times
    (candidates); ``mask_path="centre"`` generates the central square, ``"bottom"`` the bottom half."""
    if task not in TASKS:
        raise DgmError(f"unknown restoration task {task!r}: use one of {', '.join(TASKS)}")
    if not spec.is_image or spec.levels is None:
        raise DgmError(f"restoration is for images, and this model was trained on {spec.name!r} {spec.shape}")
    channels, height, width = spec.shape
    im = input_path if isinstance(input_path, Image.Image) else read_picture(input_path)
    size = f"{im.width}x{im.height}"
    if task == "colorize":
        if channels != 3:
            raise DgmError("colorize needs a model of colour images, and this one makes grey images")
        if (im.width, im.height) != (width, height):
            raise DgmError(f"{input_path} is {size}, the model makes {width}x{height} images: give a "
                           f"{width}x{height} grey picture")
        grey = to_model_values(im.convert("L"), 1, spec)
        return Colorization(grey.repeat(copies, 1, 1, 1), channels)
    if channels == 1 and has_colour(im):
        raise DgmError(f"{input_path} has colour, the model makes grey images: convert it to greyscale")
    if channels == 3 and not has_colour(im) and task == "inpaint":
        raise DgmError(f"{input_path} is grey, the model makes colour images: give a colour picture, or use "
                       "--task colorize to colour it")
    x = to_model_values(im, channels, spec)
    if task == "super-resolution":
        factor = width // im.width if im.width else 0
        if factor < 2 or (im.width * factor, im.height * factor) != (width, height):
            raise DgmError(f"{input_path} is {size}: super-resolution to the model's {width}x{height} needs a "
                           f"picture whose sides divide those, e.g. {width // 2}x{height // 2}")
        return SuperResolution(x.repeat(copies, 1, 1, 1), factor)
    if (im.width, im.height) != (width, height):
        raise DgmError(f"{input_path} is {size}, the model makes {width}x{height} images: give a "
                       f"{width}x{height} picture")
    if mask_path is None:
        raise DgmError("inpaint needs --mask: a picture of the image's size, white where pixels are to be "
                       "generated, or 'centre' or 'bottom'")
    if str(mask_path) in NAMED_MASKS:
        keep = NAMED_MASKS[str(mask_path)](height, width)
        return Inpaint(x.repeat(copies, 1, 1, 1), keep.expand(copies, 1, height, width))
    mask_im = read_picture(mask_path)
    if mask_im.size != im.size:
        raise DgmError(f"the mask {mask_path} is {mask_im.width}x{mask_im.height}, the image is {size}: "
                       "give a mask of the image's size")
    generate = torch.from_numpy(np.asarray(mask_im.convert("L")) >= 128)[None, None]
    if not generate.any():
        raise DgmError(f"the mask {mask_path} has no white pixel: white marks the pixels to generate")
    return Inpaint(x.repeat(copies, 1, 1, 1), (~generate).expand(copies, 1, height, width))


def examples_of(x: Tensor, spec: DataSpec) -> list[tuple[str, KnownView]]:
    """Restoration tasks on test images ``x`` for the report: the bottom half to complete, the
    central square (half the side) to inpaint, a 2x super-resolution, and, for colour images,
    colorization."""
    _, h, w = spec.shape
    tasks: list[tuple[str, KnownView]] = [
        (title, Inpaint(x, NAMED_MASKS[name](h, w).to(x.device).expand(len(x), -1, -1, -1)))
        for name, title in (("bottom", "completion (the top half given)"),
                            ("centre", "inpainting (the central square generated)"))]
    if h % 2 == 0 and w % 2 == 0:
        tasks.append(("2x super-resolution", SuperResolution(torch.nn.functional.avg_pool2d(x, 2), 2)))
    if spec.shape[0] == 3:
        tasks.append(("colorization", Colorization(x.mean(1, keepdim=True), 3)))
    return tasks


def shown(view: KnownView, channels: int) -> Tensor:
    """The known view as a picture of the model's size (unknown pixels of an inpainting mid-grey)."""
    x = torch.where(view.mask, view.y, torch.zeros_like(view.y)) if isinstance(view, Inpaint) else view.lift(view.y)
    return x.expand(-1, channels, -1, -1)


def restore_to_picture(model, view: KnownView, out: str | Path, *, seed: int = 0, progress: bool = True,  # noqa: ANN001
                       **options) -> Path:
    """Restore ``view`` with ``model`` and save one row: the known view, then each candidate."""
    from dgm.data.core import to_unit
    from dgm.io import images

    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        restored = model.restore(view, generator=generator, progress=progress, **options)
    given = shown(view, restored.shape[1])[:1].cpu()
    picture = images.grid(to_unit(torch.cat([given, restored.cpu()]), model.spec), nrow=len(restored) + 1,
                          scale=max(1, 64 // model.spec.shape[-1]))
    return images.save(picture, out)


@register_app
class Restoration(App):
    """``dgm restore RUN --task inpaint|super-resolution|colorize --input PICTURE``, and the report's
    restorations of test images, for every model that can ``restore`` a known view."""

    name = "restore"
    description = "inpaint, super-resolve or colorize a picture with a model that can restore known views"
    requires = frozenset({"restore"})

    def add_arguments(self, parser: argparse.ArgumentParser, model_class) -> None:  # noqa: ANN001

        parser.add_argument("--task", required=True, choices=list(TASKS))
        parser.add_argument("--input", required=True, help="the picture: the image (inpaint), a low-resolution "
                            "or a grey one; test:K takes test example K of the run's data")
        parser.add_argument("--mask", help="inpaint: a picture of the image's size, white where pixels are to be "
                            "generated; 'centre' generates the central square, 'bottom' the bottom half")
        parser.add_argument("-n", type=POSITIVE, default=4, help="restorations to draw")
        parser.add_argument("-o", "--output", default="restored.png", help="a .png row: the input, then the restorations")
        add_sampler_flags(parser, model_class, "restore")

    def run(self, model, args: argparse.Namespace) -> str:  # noqa: ANN001
        from dgm import run

        out = output_path(args.output)
        picture = args.input
        if picture.startswith("test:"):  # a test example of the run's own dataset, as a user would give it
            from dgm.data import load as load_dataset

            config, _ = run.read_config(args.run)
            test = load_dataset(config.data.name, "test", size=config.data.size, channels=config.data.channels)
            index = picture[5:]
            if not index.isdigit() or int(index) >= len(test):
                raise DgmError(f"--input test:K takes the index of a test example, 0..{len(test) - 1}, got {picture!r}")
            if test.spec.levels is None:
                raise DgmError(f"restoration is for images, and {config.data.name!r} holds {test.spec.shape} vectors")
            picture = picture_of(args.task, test.raw[int(index)].float() * 255 / (test.spec.levels - 1))
        view = known_view(args.task, model.spec, picture, args.mask, copies=args.n).to(model.device)
        options = sampler_options(model, args, model.restore)
        restore_to_picture(model, view, out, seed=args.seed, progress=not args.quiet, **options)
        return f"{args.task}: the input, then {args.n} restorations -> {out}"

    def report_figures(self, model, examples: Tensor, *, labels: Tensor | None = None,
                       generator: torch.Generator | None = None):  # noqa: ANN001, ANN201
        spec = model.spec
        if spec.levels is None:
            return []
        x = examples[:8]
        figures = []
        for title, view in examples_of(x, spec):
            try:  # a model restores the views it can (an autoregressive model without noise levels: the top given)
                restored = model.restore(view, generator=generator)
            except DgmError:
                continue
            figures.append((f"Restoration: {title}", torch.cat([shown(view, spec.shape[0]), restored, x]), len(x),
                            f"top: what is known of {len(x)} test images; middle: the model's restorations; "
                            "bottom: the test images"))
        return figures
