"""What writes the prompt suggestions of a `describe` job (`/describe`): four prompts that would draw an image.

- The shapes model has its own: the attribute classifier of `generation.shapes.classifier`, trained on exactly the
  images that model draws, reads kind, colour, size, position and background. Its suggestions are the most likely
  (kind, colour) pairs, each with the most likely size, position and background, written the way the data set's
  captions are (`a large red circle in the center on a white background`). A shapes model folder holds it as
  `CLASSIFIER_FILE` (safetensors); the shipped default model does.
- Any other model gets the captioning model its worker was started with (`--captioner`): an image-to-text model
  transformers loads with `AutoModelForImageTextToText` (BLIP, GIT, a vision-encoder-decoder, ...) from a folder or a
  Hugging Face id, loaded once and shared by every model the worker serves. Its suggestions are the best distinct
  `DESCRIBE_SUGGESTIONS` of twice as many beams of its caption search.
- Without either, the card's `captioner` is "" and the bot says `/describe` is not available.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from generation.protocol.contract import DESCRIBE_SUGGESTIONS, MAX_SUGGESTION_CHARS

log = logging.getLogger(__name__)

#: The attribute classifier's weights in a shapes model's folder.
CLASSIFIER_FILE = "attribute-classifier.safetensors"
#: The longest caption a captioning model writes, in tokens.
CAPTION_TOKENS = 40


class CaptionerError(RuntimeError):
    """A captioning model could not be loaded; the message names it and why."""


class Captioner(Protocol):
    #: What the card says answers `/describe` (`ModelCard.captioner`).
    label: str

    def suggest(self, image: Image.Image, n: int = DESCRIBE_SUGGESTIONS) -> list[str]: ...


def _clean(texts: list[str], n: int) -> list[str]:
    """At most `n` distinct, non-empty, single-line suggestions of at most MAX_SUGGESTION_CHARS characters."""
    out: list[str] = []
    for text in texts:
        text = " ".join(str(text).split())[:MAX_SUGGESTION_CHARS].strip()
        if text and text.casefold() not in (o.casefold() for o in out):
            out.append(text)
    return out[:n]


@dataclass
class ShapesCaptioner:
    """The shapes attribute classifier as a captioner."""

    model: Any
    label: str = "shapes attribute classifier"

    @classmethod
    def load(cls, path: str | Path) -> ShapesCaptioner:
        from safetensors.torch import load_file

        from generation.shapes import classifier as clf

        model = clf.build()
        try:
            state = load_file(str(path))
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except Exception as exc:
            raise CaptionerError(f"the attribute classifier {str(path)!r} could not be loaded: {exc}") from None
        return cls(model.eval())

    def probabilities(self, image: Image.Image) -> dict[str, np.ndarray]:
        """Each attribute's probabilities over its values (`generation.shapes.dataset.VALUES`) for one image."""
        import torch

        from generation.shapes import classifier as clf
        from generation.shapes import dataset as ds

        arr = np.array(image.convert("RGB").resize((clf.INPUT, clf.INPUT), Image.Resampling.BOX), dtype=np.uint8)
        with torch.inference_mode():
            logits = self.model(clf._tensor(arr[None]))
        return {a: torch.softmax(lg[0].float(), 0).numpy() for a, lg in zip(ds.ATTRIBUTES, logits, strict=True)}

    def suggest(self, image: Image.Image, n: int = DESCRIBE_SUGGESTIONS) -> list[str]:
        from generation.shapes import dataset as ds

        p = self.probabilities(image)
        pairs = sorted(((float(p["kind"][k] * p["color"][c]), k, c) for k in range(len(ds.KINDS))
                        for c in range(len(ds.COLORS))), reverse=True)
        size = ds.SIZES[int(p["size"].argmax())]
        position = ds.POSITIONS[int(p["position"].argmax())]
        background = ds.BACKGROUNDS[int(p["background"].argmax())]
        texts = []
        for _, k, c in pairs[: max(1, n)]:
            kind, color = ds.KINDS[k], ds.COLORS[c]
            texts.append(f"a {ds.SIZE_WORDS[size][0]} {ds.COLOR_WORDS[color][0]} {ds.KIND_WORDS[kind][0]} "
                         f"{ds.POSITION_WORDS[position][0]} {ds.BACKGROUND_WORDS[background][0]}")
        return _clean(texts, n)


def shapes_captioner_for(folder: Path | None) -> ShapesCaptioner | None:
    """The attribute classifier of a shapes model folder, or None when the folder has none."""
    if folder is None or not (folder / CLASSIFIER_FILE).is_file():
        return None
    return ShapesCaptioner.load(folder / CLASSIFIER_FILE)


@dataclass
class TransformersCaptioner:
    """An image-to-text model of transformers (`AutoModelForImageTextToText`), its image processor and tokenizer."""

    model: Any
    processor: Any
    tokenizer: Any
    name: str
    device: str = "cpu"
    label: str = field(default="")

    def __post_init__(self) -> None:
        self.label = self.label or f"captioning model {self.name}"[:120]

    @classmethod
    def load(cls, source: str, device: str = "cpu") -> TransformersCaptioner:
        """A captioning model from a folder or a Hugging Face id (offline: from the cache, or refused)."""
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        try:
            model = AutoModelForImageTextToText.from_pretrained(source)
            processor = AutoProcessor.from_pretrained(source)
            # A captioning model's processor holds both halves (BLIP, GIT); a vision-encoder-decoder folder has an
            # image processor and a tokenizer side by side, and AutoProcessor gives one of them.
            images = getattr(processor, "image_processor", None) or (
                AutoImageProcessor.from_pretrained(source) if hasattr(processor, "batch_decode") else processor)
            tokenizer = getattr(processor, "tokenizer", None) or (
                processor if hasattr(processor, "batch_decode") else AutoTokenizer.from_pretrained(source))
        except Exception as exc:
            raise CaptionerError(f"captioner {source!r} could not be loaded as an image-to-text model: "
                                 f"{type(exc).__name__}: {exc}") from None
        model.to(device).eval()
        name = Path(source).name if Path(source).exists() else source
        log.info("captioner %s (%s) loaded on %s", name, type(model).__name__, device)
        return cls(model, images, tokenizer, name=name, device=device)

    def suggest(self, image: Image.Image, n: int = DESCRIBE_SUGGESTIONS) -> list[str]:
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if hasattr(v, "to")}
        beams = 2 * max(n, 1)  # twice the beams asked for: some decode to the same words, and repeats are dropped
        with torch.inference_mode():
            out = self.model.generate(**inputs, num_beams=beams, num_return_sequences=beams,
                                      max_new_tokens=CAPTION_TOKENS, do_sample=False)
        return _clean(self.tokenizer.batch_decode(out, skip_special_tokens=True), n)
