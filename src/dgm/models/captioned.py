"""What every model that draws images from captions shares (``dalle``, ``aligndraw``).

Captions are word ids of :mod:`dgm.data.captions`: the data's own (``scenes``) or its class names
("ankle boot"). A model of this kind refuses data without either in one line, turns caption text
into ids with one clear line for unknown words or long captions, resolves what ``sample`` was asked
to draw (a caption, class labels, or neither), and draws the report's rows of images per caption.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dgm.data.captions import CaptionVocabulary, caption_ids, caption_vocabulary, class_caption, class_caption_ids
from dgm.data.core import Batch, DataSpec
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel
from dgm.models.refusals import class_labels

FIGURE_CAPTIONS = 6  # captions the report draws, a row of FIGURE_COLUMNS images each
FIGURE_COLUMNS = 8


class CaptionedImageModel(GenerativeModel):
    """A model of images given a caption: ``self.vocabulary`` and the caption plumbing (module docstring).
    A subclass offers ``sample_captioned(captions, *, generator, rerank=1)``."""

    def __init__(self, config: Any, spec: DataSpec) -> None:
        super().__init__(config, spec)
        vocabulary = caption_vocabulary(spec)
        if vocabulary is None:
            raise DgmError(f"model {self.name!r} draws images from captions, but {spec.name!r} has neither captions "
                           f"nor class names: use --data scenes, or labelled images such as fashion-mnist")
        self.vocabulary: CaptionVocabulary = vocabulary
        # the class captions' ids (None for data with its own captions), made once for every training step
        self.register_buffer("class_captions", class_caption_ids(spec), persistent=False)

    def batch_captions(self, batch: Batch) -> Tensor:
        """Word ids ``(B, T)`` of a batch's captions: its own, or its labels' class captions."""
        return caption_ids(batch, self.spec, self.class_captions)

    def captions(self, texts: list[str]) -> Tensor:
        """Word ids ``(n, T)`` on the model's device; one clear line for unknown words or long captions."""
        return self.vocabulary.encode(texts).to(self.device)

    def requested_captions(self, n: int, condition: Tensor | int | None, caption: str | None,
                           sampler: str | None) -> Tensor | None:
        """The captions ``(n, T)`` ``sample`` was asked for: ``caption`` for all, or the class captions of
        ``condition`` (one label or ``n``); ``None`` when neither is given. Checks the sampler's name."""
        names = [s.name for s in self.samplers]
        if sampler is not None and sampler not in names:
            raise DgmError(f"model {self.name!r} has no sampler {sampler!r}: use {', '.join(names)}")
        if caption is not None and condition is not None:
            raise DgmError("give a caption or a class, not both")
        if caption is not None:
            return self.captions([caption]).expand(n, -1)
        if condition is None:
            return None
        if not self.spec.class_names:
            raise DgmError(f"{self.spec.name!r} has no class names to caption: pass a caption (--caption)")
        labels = class_labels(self.name, condition, n, len(self.spec.class_names), self.device)
        return self.batch_captions(Batch(torch.empty(0), y=labels))

    def figure_captions(self) -> list[str]:
        """The captions the report draws: the data's examples (``scenes`` names held-out compositions among
        them), else its first class captions."""
        texts = list(self.spec.extras.get("example_captions") or
                     [class_caption(name) for name in self.spec.class_names or []])[:FIGURE_CAPTIONS]
        if not texts:
            raise DgmError(f"{self.spec.name!r} names no example or class captions to draw: pass a caption (--caption)")
        return texts

    def report_figures(self, *, generator: torch.Generator | None = None) -> list[tuple[str, Tensor | str, int, str]]:
        return [self.caption_figure(generator=generator)]

    def caption_figure(self, *, generator: torch.Generator | None = None,
                       rerank: int = 1) -> tuple[str, Tensor, int, str]:
        """A row of images for each of :meth:`figure_captions`, each the best of ``rerank`` candidates."""
        texts = self.figure_captions()
        captions = self.captions(texts).repeat_interleave(FIGURE_COLUMNS, 0)
        images = self.sample_captioned(captions, generator=generator, rerank=rerank)
        rows = "; ".join(f"row {i + 1}: \"{t}\"" for i, t in enumerate(texts))
        if rerank == 1:
            return "Images from captions", images, FIGURE_COLUMNS, f"{FIGURE_COLUMNS} samples per caption, {rows}."
        return ("Images from captions, reranked", images, FIGURE_COLUMNS,
                f"each the best of {rerank} candidates by the contrastive model; {rows}.")
