"""LoRAs and textual-inversion embeddings: the files a worker serves, which model each one fits, and applying them.

Folders. A worker's `--lora-dir` holds LoRA files (`.safetensors`). A file directly in it is shared: every model it
fits offers it. A file in a subfolder named like a model (compared as queue tokens: any case, spaces or punctuation)
is that model's alone, and wins over a shared file of the same name; subfolders of other models are not read.
`--embedding-dir` is laid out the same way for textual-inversion embeddings (`.safetensors`, `.pt`, `.bin`). A file's
name without its suffix is the name members use (`<lora:NAME:0.8>`; an embedding's name as a word of the prompt),
so it has to be a valid LoRA name (letters, digits, spaces, '.', '_', '-') or, for an embedding, a word without
spaces; other files are logged and left out.

LoRA formats, read from the keys:
- kohya / AUTOMATIC1111: `lora_unet_<module>` and `lora_te_<module>` (SDXL: `lora_te1_`, `lora_te2_`) with
  `.lora_down.weight`, `.lora_up.weight` and `.alpha`;
- diffusers: the component in front (`unet.`, `text_encoder.`, `text_encoder_2.`, `transformer.`), then the module
  and `.lora.down.weight`/`.lora.up.weight` or PEFT's `.lora_A.weight`/`.lora_B.weight`;
- PEFT: a bare state dict of a UNet or transformer (`get_peft_model_state_dict`), the component put in front when it
  is loaded.
diffusers converts the kohya layout itself. LyCORIS files (LoHa, LoKr) are refused: diffusers cannot load them.

Which model a LoRA fits. At start only each file's header is read (tensor names, shapes and metadata, no weights).
Its family is read from the keys and shapes: keys of a second text encoder (`text_encoder_2`, `lora_te2_`) make an
SDXL LoRA, the width of the text states its cross-attention reads (the input of `attn2.to_k`/`to_v`: 768 for SD 1.x,
1024 for SD 2.x, 2048 for SDXL) tells the UNet families apart, Flux's single-stream blocks and SD 3's joint blocks
the transformer ones. A LoRA fits a model when that family is the model's (or cannot be told, as for a model of
unusual sizes), the components it adapts are the model's, and every layer it adapts that can be found in the model
(by the diffusers module name, or by kohya's name with '_' for '.') has the widths the LoRA expects; a LoRA none of
whose layers can be found fits only a model of its own, known family (kohya's SDXL files name the original layout's
blocks). A file that does not fit is logged and left off that model's card.

Trigger words come from the file's metadata: `modelspec.trigger_phrase` (comma-separated), else the most frequent
tags of kohya's `ss_tag_frequency`; a card carries at most `MAX_TRIGGERS` per LoRA.

Applying. `Adapters` keeps the LoRAs of recent runs loaded into the pipeline as PEFT adapters (at most
`MAX_ADAPTERS`; the least recently used one is deleted first) and before every run makes exactly that run's LoRAs
active at their weights (`set_adapters`); a run without LoRAs runs with LoRA layers disabled, which is bit for bit
the model without them, so nothing of one job's LoRAs reaches the next. A LoRA at weight 0 is not applied at all.
A file changed since the start is read and checked again when it is next loaded.

Embeddings are loaded once, when the model is (`pipe.load_textual_inversion(vectors, token=NAME)`; SDXL's two-encoder
form, `clip_l` and `clip_g`, into both encoders). Its token is the name in lower case and matches whole words only
(an embedding called `ink` leaves `pink` alone, as in AUTOMATIC1111); the engine writes the name in a prompt, in any
case, as that token before the prompt is encoded (`with_embedding_tokens`), so every vector of a multi-vector
embedding is read. Only Stable Diffusion 1.x/2.x and SDXL models take embeddings.

`Lora hashes` and `TI hashes` in the PNG parameters carry the first 12 hex digits of each file's sha256, as
AUTOMATIC1111 writes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generation.protocol.cards import (
    ARCHITECTURE_LABELS,
    ARCHITECTURE_WITH_ARTICLE,
    EMBEDDING_NAME,
    MAX_CARD_EMBEDDINGS,
    MAX_CARD_LORAS,
    MAX_TRIGGER_CHARS,
    MAX_TRIGGERS,
    LoraInfo,
)
from generation.protocol.queue import model_token

log = logging.getLogger(__name__)

LORA_SUFFIXES = (".safetensors",)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
#: LoRAs kept loaded in one pipeline; one run applies at most `generation.protocol.prompt.MAX_LORAS` (8) of them.
MAX_ADAPTERS = 8
#: The width of the text states each UNet family's cross-attention reads.
CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
#: The families a LoRA's keys can tell.
FAMILIES = frozenset({"sd1", "sd2", "sdxl", "sd3", "flux"})
#: The pipeline components a LoRA may adapt.
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
#: Families that take textual-inversion embeddings.
EMBEDDING_FAMILIES = frozenset({"shapes", "sd1", "sd2", "sdxl"})

_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3", "lora_transformer_": "transformer"}
#: The end of a LoRA weight's key: (kind, down or up).
_WEIGHT_END = re.compile(r"\.(lora_down|lora_up|lora\.down|lora\.up|lora_A|lora_B|lora_linear_layer\.down"
                         r"|lora_linear_layer\.up)(?:\.default)?\.weight$")
_LYCORIS = re.compile(r"\.(hada_w[12]_[ab]|lokr_w[12](_[ab])?|oft_blocks|lokr_t2)$")
_FLUX_MARKS = re.compile(r"single_transformer_blocks|single_blocks|double_blocks")
_SD3_MARKS = re.compile(r"joint_blocks|context_block")
_CROSS_KV = re.compile(r"attn2[._]to_[kv]$")


class LoraError(ValueError):
    """A LoRA or embedding file a model cannot use; the message says why."""


# --- one LoRA file -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraLayer:
    """One layer a LoRA adapts: its component ("" for a bare PEFT state dict), its module path (dotted, or kohya's
    with '_' for '.') and the shapes of its down (A) and up (B) weights."""

    component: str
    path: str
    kohya: bool
    down: tuple[int, ...] = ()
    up: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as its header describes it (no weights are read)."""

    path: Path
    name: str
    size: int
    mtime_ns: int
    #: `kohya`, `diffusers` or `peft` (a bare PEFT state dict).
    format: str
    #: `sd1`, `sd2`, `sdxl`, `sd3` or `flux`; "" when the keys and shapes do not tell.
    family: str
    layers: tuple[LoraLayer, ...]
    triggers: tuple[str, ...] = ()

    @property
    def components(self) -> frozenset[str]:
        return frozenset(layer.component for layer in self.layers)

    @property
    def context_width(self) -> int | None:
        """The width of the text states its cross-attention layers read, when it adapts one."""
        for layer in self.layers:
            if layer.component in ("unet", "") and _CROSS_KV.search(layer.path) and len(layer.down) >= 2:
                return layer.down[1]
        return None

    def stat_key(self) -> tuple[int, int]:
        return self.mtime_ns, self.size

    def info(self, architecture: str) -> LoraInfo:
        """The card's entry for it on a model of `architecture` (one it fits)."""
        return LoraInfo(name=self.name, architecture=architecture, size=self.size, triggers=self.triggers)


def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file's header: its format, family, layers and trigger words. Raises `LoraError` for a file that
    is not a LoRA diffusers can load."""
    from safetensors import safe_open

    path = Path(path)
    try:
        stat = path.stat()
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except OSError as exc:
        raise LoraError(f"it could not be read ({exc.strerror or exc})") from None
    except Exception as exc:  # safetensors' own errors: not a safetensors file
        raise LoraError(f"it is not a readable .safetensors file ({exc})") from None
    if any(_LYCORIS.search(key) for key in shapes):
        raise LoraError("it is a LyCORIS file (LoHa/LoKr), which diffusers cannot load")
    layers, fmt = _layers(shapes)
    if not layers:
        raise LoraError("it holds no LoRA weights (lora_down/lora_up or lora_A/lora_B)")
    return LoraFile(path=path, name=path.stem, size=stat.st_size, mtime_ns=stat.st_mtime_ns, format=fmt,
                    family=_family(layers), layers=layers, triggers=_triggers(metadata))


def _layers(shapes: dict[str, tuple[int, ...]]) -> tuple[tuple[LoraLayer, ...], str]:
    """The layers of a LoRA state dict's keys, and its format."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    fmt = ""
    for key, shape in shapes.items():
        m = _WEIGHT_END.search(key)
        if m is None:
            continue
        module = key[: m.start()]
        side = "down" if m.group(1) in ("lora_down", "lora.down", "lora_A", "lora_linear_layer.down") else "up"
        kohya = next((p for p in _KOHYA_PREFIXES if module.startswith(p)), None)
        if kohya is not None:
            component, path, fmt = _KOHYA_PREFIXES[kohya], module[len(kohya):], "kohya"
            if component == "unet" and (_FLUX_MARKS.search(path) or _SD3_MARKS.search(path)):
                component = "transformer"  # kohya names Flux's and SD 3's transformer `lora_unet_` too
        else:
            module = module.removeprefix("base_model.model.")
            head, _, rest = module.partition(".")
            if head in COMPONENTS:
                component, path, fmt = head, rest, fmt or "diffusers"
            else:
                component, path, fmt = "", module, fmt or "peft"
        entry = found.setdefault((component, path), {"kohya": kohya is not None})
        entry[side] = shape
    layers = tuple(LoraLayer(component, path, entry["kohya"], entry.get("down", ()), entry.get("up", ()))
                   for (component, path), entry in found.items())
    return layers, fmt


def _family(layers: Sequence[LoraLayer]) -> str:
    """The model family a LoRA's layers were made for, or "" when they do not tell."""
    paths = " ".join(layer.path for layer in layers)
    components = {layer.component for layer in layers}
    if "transformer" in components or _FLUX_MARKS.search(paths) or _SD3_MARKS.search(paths):
        if _FLUX_MARKS.search(paths):
            return "flux"
        return "sd3" if _SD3_MARKS.search(paths) else ""
    if "text_encoder_2" in components:
        return "sdxl"
    width = next((layer.down[1] for layer in layers
                  if layer.component in ("unet", "") and _CROSS_KV.search(layer.path) and len(layer.down) >= 2), None)
    return CONTEXT_WIDTHS.get(width, "") if width is not None else ""


def _clean_word(text: str) -> str:
    return " ".join(re.sub(r"[\x00-\x1f\x7f<>`]", " ", str(text)).split())


def _triggers(metadata: dict[str, str]) -> tuple[str, ...]:
    """Trigger words from a LoRA's metadata: SAI's `modelspec.trigger_phrase`, else kohya's most frequent training
    tags (`ss_tag_frequency`); at most `MAX_TRIGGERS`, each at most `MAX_TRIGGER_CHARS` long."""
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase") or ""
    if phrase.strip():
        words = phrase.split(",")
    elif metadata.get("ss_tag_frequency"):
        counts: dict[str, int] = {}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            for tags in json.loads(metadata["ss_tag_frequency"]).values():
                for tag, count in tags.items():
                    counts[tag] = counts.get(tag, 0) + int(count)
        words = sorted(counts, key=lambda tag: (-counts[tag], tag))
    out: list[str] = []
    for word in words:
        word = _clean_word(word)
        if word and len(word) <= MAX_TRIGGER_CHARS and word.casefold() not in {w.casefold() for w in out}:
            out.append(word)
        if len(out) == MAX_TRIGGERS:
            break
    return tuple(out)


# --- does it fit this model? -------------------------------------------------------------------------------------


def _label(family: str) -> str:
    return ARCHITECTURE_LABELS.get(family, family)


def _underscored(root) -> dict[str, Any]:
    """A component's modules by kohya's names (the dotted path with '_' for '.'; a text encoder's also with the
    `text_model_` that transformers 5 no longer has in front)."""
    table: dict[str, Any] = {}
    for name, module in root.named_modules():
        if name:
            key = name.replace(".", "_")
            table.setdefault(key, module)
            if not name.startswith("text_model."):
                table.setdefault(f"text_model_{key}", module)
    return table


def _module(pipe, layer: LoraLayer, tables: dict[str, dict[str, Any]]) -> tuple[str, Any] | None:
    """The model's module a LoRA layer adapts, with its component; None when the model has no such module."""
    for component in ([layer.component] if layer.component else ["unet", "transformer"]):
        root = getattr(pipe, component, None)
        if root is None:
            continue
        if layer.kohya:
            if component not in tables:
                tables[component] = _underscored(root)
            module = tables[component].get(layer.path)
        else:
            module = None
            for path in (layer.path, layer.path.removeprefix("text_model.")):
                with contextlib.suppress(AttributeError):
                    module = root.get_submodule(path)
                    break
        if module is not None:
            return component, module
    return None


def check_fit(lora: LoraFile, pipe, architecture: str) -> None:
    """Raise `LoraError` saying why `lora` cannot be applied to `pipe` (a model of `architecture`); see the module
    docstring for the rules."""
    family = lora.family
    if family and architecture in FAMILIES and family != architecture:
        raise LoraError(f"it is a LoRA for {_label(family)} models, and this is "
                        f"{ARCHITECTURE_WITH_ARTICLE.get(architecture, 'a')} model")
    for component in lora.components:
        if component and getattr(pipe, component, None) is None:
            raise LoraError(f"it adapts a `{component}`, which this model has not")
    unet = getattr(pipe, "unet", None)
    width = lora.context_width
    if unet is not None and width is not None and width != unet.config.get("cross_attention_dim"):
        raise LoraError(f"its cross-attention reads text states {width} wide, this model's "
                        f"{unet.config.get('cross_attention_dim')}")
    tables: dict[str, dict[str, Any]] = {}
    found = 0
    for layer in lora.layers:
        hit = _module(pipe, layer, tables)
        if hit is None:
            continue
        found += 1
        weight = getattr(hit[1], "weight", None)
        if weight is None or weight.dim() < 2:
            raise LoraError(f"its layer `{layer.path}` adapts a module of the model that has no weights to adapt")
        wide_in, wide_out = int(weight.shape[1]), int(weight.shape[0])
        if (len(layer.down) >= 2 and layer.down[1] != wide_in) or (layer.up and layer.up[0] != wide_out):
            got_in = layer.down[1] if len(layer.down) >= 2 else "?"
            got_out = layer.up[0] if layer.up else "?"
            raise LoraError(f"its layer `{layer.path}` maps {got_in} to {got_out} values, the model's {wide_in} to "
                            f"{wide_out}")
    if not found and not (family and family == architecture):
        raise LoraError("none of the layers it adapts is a layer of this model")


# --- the files of a folder ---------------------------------------------------------------------------------------


def model_folder(root: Path, model_name: str) -> Path | None:
    """The subfolder of `root` named like the model (compared as queue tokens), if there is one."""
    token = model_token(model_name)
    with contextlib.suppress(OSError):
        for child in sorted(root.iterdir()):
            if child.is_dir() and model_token(child.name) == token:
                return child
    return None


def _files(root: Path, model_name: str, suffixes: tuple[str, ...]) -> Iterator[tuple[Path, bool]]:
    """The files for a model: its own subfolder's first (True), then the shared ones (False), each by name."""
    own = model_folder(root, model_name)
    for folder, is_own in ((own, True), (root, False)):
        if folder is None:
            continue
        try:
            paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        except OSError as exc:
            log.warning("folder %s could not be read: %s", folder, exc.strerror or exc)
            continue
        for path in paths:
            yield path, is_own


def find_loras(root: str | Path, model_name: str, pipe, architecture: str) -> dict[str, LoraFile]:
    """The LoRAs of `root` that fit the model (by name in any case, in the order a card lists them). Files that do
    not fit are logged: as a warning when they are in the model's own folder, else (a shared LoRA made for another
    family) at info level."""
    root = Path(root)
    found: dict[str, LoraFile] = {}
    for path, own in _files(root, model_name, LORA_SUFFIXES):
        note = log.warning if own else log.info
        key = path.stem.casefold()
        if key in found:
            log.info("LoRA %s is not offered for model %s: %s has the same name", path, model_name, found[key].path)
            continue
        try:
            lora = read_lora(path)
            lora.info(architecture)  # the name has to be one a prompt can use
        except ValueError as exc:
            reason = str(exc) if isinstance(exc, LoraError) else (
                "its name has to be 1-80 letters, digits, spaces, '.', '_' or '-' to be used as <lora:NAME>; rename it")
            note("LoRA %s is not offered for model %s: %s", path, model_name, reason)
            continue
        try:
            check_fit(lora, pipe, architecture)
        except LoraError as exc:
            note("LoRA %s is not offered for model %s: %s", path, model_name, exc)
            continue
        if len(found) >= MAX_CARD_LORAS:
            log.warning("model %s: more than %d LoRAs fit it; %s and the rest are left out", model_name,
                        MAX_CARD_LORAS, path)
            break
        found[key] = lora
    if found:
        log.info("model %s: %d LoRA(s): %s", model_name, len(found), ", ".join(lora.name for lora in found.values()))
    return found


# --- applying LoRAs ----------------------------------------------------------------------------------------------

#: path -> (mtime, size, short hash) of the files hashed so far.
_hashes: dict[str, tuple[int, int, str]] = {}


def short_hash(path: str | Path) -> str:
    """The first 12 hex digits of the file's sha256 (AUTOMATIC1111's short hash), cached while the file is unchanged;
    for a file that can no longer be read, the hash it had when it was last read ("" if it never was)."""
    key = str(path)
    try:
        stat = Path(path).stat()
        known = _hashes.get(key)
        if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
            return known[2]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return _hashes[key][2] if key in _hashes else ""
    _hashes[key] = (stat.st_mtime_ns, stat.st_size, digest.hexdigest()[:12])
    return _hashes[key][2]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide what diffusers, transformers and PEFT say while adapters are loaded or deleted: "no LoRA keys for the
    text encoder", load reports, "already found a peft_config" — expected with several adapters, and not the
    operator's to act on."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Adapters:
    """The LoRAs loaded into one pipeline as PEFT adapters, least recently used first; see the module docstring."""

    def __init__(self, pipe, architecture: str, capacity: int = MAX_ADAPTERS):
        self.pipe = pipe
        self.architecture = architecture
        self.capacity = max(1, capacity)
        #: path -> (adapter name, the file's (mtime, size) when it was loaded)
        self._loaded: OrderedDict[str, tuple[str, tuple[int, int]]] = OrderedDict()
        self._count = 0
        #: The (adapter name, weight) pairs active now; () when LoRA is off.
        self.active: tuple[tuple[str, float], ...] = ()

    @property
    def loaded(self) -> list[str]:
        """The paths of the LoRAs loaded now, least recently used first."""
        return list(self._loaded)

    def use(self, wanted: Sequence[tuple[LoraFile, float]]) -> None:
        """Make exactly `wanted` (LoRA, weight) active; nothing (LoRA layers off) when it is empty or every weight is
        0. Raises `LoraError` naming the LoRA that could not be loaded."""
        wanted = [(lora, float(weight)) for lora, weight in wanted if weight != 0]
        pipe = self.pipe
        if not wanted:
            if self.active or self._loaded:
                with _quiet():
                    pipe.disable_lora()
            self.active = ()
            return
        names = []
        for lora, _ in wanted:
            try:
                names.append(self._load(lora))
            except LoraError as exc:
                raise LoraError(f"LoRA `{lora.name}` could not be loaded: {exc}") from None
        self._evict(keep=set(names))
        active = tuple(zip(names, (w for _, w in wanted), strict=True))
        with _quiet():
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=[w for _, w in wanted])
        self.active = active

    def _load(self, lora: LoraFile) -> str:
        key = str(lora.path)
        try:
            stat = lora.path.stat()
        except OSError as exc:
            raise LoraError(f"its file could not be read ({exc.strerror or exc})") from None
        now = (stat.st_mtime_ns, stat.st_size)
        if key in self._loaded:
            name, loaded_as = self._loaded[key]
            if loaded_as == now:
                self._loaded.move_to_end(key)
                return name
            self._delete(key)  # the file changed since it was loaded
        if now != lora.stat_key():
            check_fit(read_lora(lora.path), self.pipe, self.architecture)  # changed since the start: check it again
        from safetensors.torch import load_file

        try:
            state = load_file(str(lora.path))
        except Exception as exc:
            raise LoraError(f"its file could not be read ({exc})") from None
        if lora.format == "peft":
            component = next((c for c in ("unet", "transformer") if getattr(self.pipe, c, None) is not None), "unet")
            state = {f"{component}.{k.removeprefix('base_model.model.')}": v for k, v in state.items()}
        self._count += 1
        name = f"lora{self._count}"
        try:
            with _quiet():
                self.pipe.load_lora_weights(state, adapter_name=name)
        except Exception as exc:
            self._forget(name)
            raise LoraError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        if not any(name in names for names in self.pipe.get_list_adapters().values()):
            self._forget(name)
            raise LoraError("none of its weights could be loaded into this model")
        short_hash(lora.path)  # for the PNG parameters, while the file is at hand
        self._loaded[key] = (name, now)
        return name

    def _evict(self, keep: set[str]) -> None:
        for key in list(self._loaded):
            if len(self._loaded) <= self.capacity:
                break
            if self._loaded[key][0] not in keep:
                self._delete(key)

    def _delete(self, key: str) -> None:
        name, _ = self._loaded.pop(key)
        self._forget(name)

    def _forget(self, name: str) -> None:
        with _quiet(), contextlib.suppress(Exception):
            if any(name in names for names in self.pipe.get_list_adapters().values()):
                self.pipe.delete_adapters(name)
        self.active = tuple(pair for pair in self.active if pair[0] != name)


# --- textual-inversion embeddings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedding:
    """An embedding loaded into a model: its name (the word that uses it), file, vectors per text encoder and hash.
    Its token in the tokenizer is the name in lower case (`token_of`)."""

    name: str
    path: Path
    vectors: int
    sha12: str

    @property
    def token(self) -> str:
        return token_of(self.name)

    def used_in(self, text: str) -> bool:
        """Whether `text` uses it (its name as a whole word, any case)."""
        return bool(text) and re.search(rf"(?<![\w]){re.escape(self.name)}(?![\w])", text, re.IGNORECASE) is not None


def token_of(name: str) -> str:
    """The token an embedding is loaded as: its name in lower case. CLIP's tokenizers read prompts in lower case,
    and diffusers finds the extra tokens of a multi-vector embedding (`name_1`, ...) only by the token as written,
    so prompts get the token in this one spelling (`with_embedding_tokens`)."""
    return name.lower()


def with_embedding_tokens(text: str, embeddings: Sequence[Embedding]) -> str:
    """`text` with every embedding's name (a whole word, any case) written as its token."""
    if not text or not embeddings:
        return text
    names = sorted((e.name for e in embeddings), key=len, reverse=True)
    pattern = re.compile(rf"(?<![\w])({'|'.join(re.escape(n) for n in names)})(?![\w])", re.IGNORECASE)
    return pattern.sub(lambda m: token_of(m.group(1)), text)


def read_embedding(path: str | Path) -> dict[str, Any]:
    """The vectors of an embedding file: `{"": tensor}` (one text encoder: A1111's `string_to_param`/`emb_params`,
    or diffusers' one-token file), or `{"clip_l": tensor, "clip_g": tensor}` (SDXL). Each tensor is n x width."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except OSError as exc:
        raise LoraError(f"it could not be read ({exc.strerror or exc})") from None
    except Exception as exc:
        raise LoraError(f"it is not an embedding file that can be read safely ({type(exc).__name__}: {exc})") from None

    def matrix(value: Any) -> Any:
        if not torch.is_tensor(value) or value.dim() not in (1, 2) or not value.is_floating_point():
            raise LoraError("its vectors are not a 1- or 2-dimensional float tensor")
        return (value if value.dim() == 2 else value.unsqueeze(0)).detach().float()

    if torch.is_tensor(data):
        return {"": matrix(data)}
    if not isinstance(data, dict):
        raise LoraError("it holds no embedding vectors")
    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": matrix(data["clip_l"]), "clip_g": matrix(data["clip_g"])}
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        params = data["string_to_param"]
        return {"": matrix(params.get("*", next(iter(params.values()))))}
    if "emb_params" in data:
        return {"": matrix(data["emb_params"])}
    tensors = [v for v in data.values() if torch.is_tensor(v)]
    if len(tensors) == 1:
        return {"": matrix(tensors[0])}
    raise LoraError("it holds no embedding vectors (string_to_param, emb_params, clip_l/clip_g or one tensor)")


def _width(text_encoder) -> int:
    return int(text_encoder.get_input_embeddings().weight.shape[1])


def _whole_words(tokenizer, token: str) -> None:
    """Let an added token match whole words only (by default a tokenizer finds it inside other words too)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return
    from tokenizers import AddedToken

    with contextlib.suppress(Exception):
        backend.add_tokens([AddedToken(token, single_word=True, normalized=True)])


def load_embedding(pipe, name: str, vectors: dict[str, Any]) -> int:
    """Load one embedding's vectors into the pipeline's text encoder(s) as the token `token_of(name)`; the number of
    vectors. Raises `LoraError` when they do not fit the model."""
    token = token_of(name)
    two = getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "tokenizer_2", None) is not None
    if two:
        if set(vectors) != {"clip_l", "clip_g"}:
            raise LoraError("it is a one-encoder embedding (SD 1.x/2.x), and this SDXL model needs clip_l and clip_g")
        targets = [(vectors["clip_l"], pipe.text_encoder, pipe.tokenizer),
                   (vectors["clip_g"], pipe.text_encoder_2, pipe.tokenizer_2)]
    else:
        if "" not in vectors:
            raise LoraError("it is an SDXL embedding (clip_l and clip_g), and this model has one text encoder")
        targets = [(vectors[""], pipe.text_encoder, pipe.tokenizer)]
    for tensor, encoder, tokenizer in targets:
        if tensor.shape[1] != _width(encoder):
            raise LoraError(f"its vectors are {tensor.shape[1]} wide, this model's text encoder takes {_width(encoder)}")
        if token in tokenizer.get_vocab():
            raise LoraError(f"`{token}` is a word the model's tokenizer knows already; rename the file")
    for tensor, encoder, tokenizer in targets:
        with _quiet():
            pipe.load_textual_inversion({token: tensor}, token=token, text_encoder=encoder, tokenizer=tokenizer)
        _whole_words(tokenizer, token)
    return int(targets[0][0].shape[0])


def load_embeddings(root: str | Path, model_name: str, pipe, architecture: str) -> dict[str, Embedding]:
    """Load the embeddings of `root` that fit the model (see the module docstring); by name in any case."""
    root = Path(root)
    files = list(_files(root, model_name, EMBEDDING_SUFFIXES))
    if not files:
        return {}
    if architecture not in EMBEDDING_FAMILIES or not hasattr(pipe, "load_textual_inversion"):
        log.info("model %s: textual-inversion embeddings are served for SD 1.x/2.x and SDXL models only; the %d "
                 "file(s) in %s are not offered for it", model_name, len(files), root)
        return {}
    found: dict[str, Embedding] = {}
    for path, own in files:
        note = log.warning if own else log.info
        name = path.stem
        if not EMBEDDING_NAME.match(name):
            note("embedding %s is not offered for model %s: its name is used as a word of the prompt, so it has to "
                 "be 1-80 letters, digits, '.', '_' or '-' (no spaces); rename it", path, model_name)
            continue
        if name.casefold() in found:
            log.info("embedding %s is not offered for model %s: %s has the same name", path, model_name,
                     found[name.casefold()].path)
            continue
        if len(found) >= MAX_CARD_EMBEDDINGS:
            log.warning("model %s: more than %d embeddings; %s and the rest are left out", model_name,
                        MAX_CARD_EMBEDDINGS, path)
            break
        try:
            count = load_embedding(pipe, name, read_embedding(path))
        except (LoraError, ValueError) as exc:
            note("embedding %s is not offered for model %s: %s", path, model_name, exc)
            continue
        found[name.casefold()] = Embedding(name, path, count, short_hash(path))
    if found:
        log.info("model %s: %d embedding(s): %s", model_name, len(found), ", ".join(e.name for e in found.values()))
    return found
