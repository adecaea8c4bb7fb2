"""The on-disk model store: which folders under the store directory can be served, and why not.

Every immediate subdirectory of the store is a candidate model folder in Hugging Face layout:

- `model_index.json` -> a diffusers pipeline (kind `image`); every component listed as
  `[library, class]` must have its subfolder, and every component that is a torch module
  (its subfolder has a `config.json`) must have safetensors weights;
- `config.json` whose `architectures` name a `*ForCausalLM` / `*LMHeadModel` -> a
  transformers language model (kind `text`) with tokenizer files and safetensors weights.

An optional `genedge.json` overrides the id (default: the folder name, or the repo id
`org/name` for a Hugging Face cache snapshot: see `hub_cache.py`) and the generation
defaults. Every safetensors file is validated from its header alone (no tensor is read), so
a truncated download or a garbage file is reported before anything tries to load it; a
broken symbolic link (a deleted cache blob) is named. A folder that cannot be served never
stops the scan: `scan_store` reports it with a one-line reason.

Nothing here imports torch: the store runs in the agent's start-up path and in the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import BadModelFolder, CorruptWeights, ModelFolderError
from genedge.contract import (
    BadModelFolder as BadModelFolderInfo,
)
from genedge.contract import (
    ImageDefaults,
    ModelFormat,
    ModelKind,
    ModelManifest,
    TextDefaults,
)

MANIFEST_FILE = "genedge.json"

# Bits per element of every dtype the safetensors format defines (0.8: 22 of them).
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

# The safetensors library refuses headers above this size; so do we (a garbage length
# would otherwise make us read gigabytes looking for JSON).
MAX_HEADER_BYTES = 100_000_000

# Model ids appear in URL paths (`/v1/models/{id}/level`) and in OpenAI `model` fields. A
# Hugging Face repo id (`org/name`) has slashes; every segment starts with a letter or digit,
# so no segment is empty, `.` or `..` (an id also names a profile file).
_ID_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._+:@-]*"
_ID_RE = re.compile(rf"^(?=.{{1,256}}$){_ID_SEGMENT}(/{_ID_SEGMENT})*$")

_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Pipeline components that hold no weights even when their folder has a `config.json`.
_NOT_MODULE_SUFFIXES = ("Tokenizer", "TokenizerFast", "Scheduler", "Processor", "Extractor")
# Weight file stems, by library: diffusers modules save `diffusion_pytorch_model.*`,
# transformers models (text encoders inside a pipeline, LLMs) save `model.*`.
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


# --------------------------------------------------------------------------------------
# safetensors headers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: its raw bytes and the tensors it describes."""

    raw: bytes
    tensors: dict[str, dict[str, Any]]
    data_bytes: int

    @property
    def file_bytes(self) -> int:
        return 8 + len(self.raw) + self.data_bytes


def read_safetensors_header(path: Path, rel: str | None = None) -> SafetensorsHeader:
    """Parse and validate the header of the safetensors file at `path` without reading tensors.

    Checks, as the safetensors library does before it maps a file: the 8-byte little-endian
    header length is plausible, the header is a JSON object, every dtype is known, every
    tensor's `data_offsets` match its shape x dtype size, the tensors tile the data region
    contiguously from offset 0, and the file is exactly `8 + header_len + data_end` bytes.
    Raises `CorruptWeights("<rel>: <what>")`, `rel` defaulting to the file name.
    """
    name = rel if rel is not None else path.name

    def bad(what: str) -> CorruptWeights:
        return CorruptWeights(f"{name}: {what}")

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"truncated: {size} bytes, shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise bad(f"header length {header_len} is implausible (not a safetensors file?)")
            if 8 + header_len > size:
                raise bad(f"truncated: {size} bytes, expected at least {8 + header_len}")
            raw = f.read(header_len)
    except OSError as exc:
        raise bad(f"unreadable: {exc.strerror or exc}") from exc
    if len(raw) < header_len:  # the file shrank under us
        raise bad(f"truncated: {8 + len(raw)} bytes, expected at least {8 + header_len}")

    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not valid JSON ({_one_line(str(exc))})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise bad("__metadata__ is not an object")
            continue
        begin, end = _check_tensor(key, info, bad)
        tensors[key] = info
        spans.append((begin, end, key))

    # The tensors must tile [0, data_end) without gaps or overlaps.
    spans.sort()
    cursor = 0
    for begin, end, key in spans:
        if begin != cursor:
            what = "overlaps the previous tensor" if begin < cursor else "leaves a gap"
            raise bad(f"tensor {key!r}: data_offsets [{begin}, {end}] {what}")
        cursor = end
    expected = 8 + header_len + cursor
    if size < expected:
        raise bad(f"truncated: {size} bytes, expected {expected}")
    if size > expected:
        raise bad(f"{size} bytes, expected {expected} ({size - expected} trailing bytes)")
    return SafetensorsHeader(raw=raw, tensors=tensors, data_bytes=cursor)


def _check_tensor(key: str, info: Any, bad: Any) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise bad(f"tensor {key!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise bad(f"tensor {key!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise bad(f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_uint(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"tensor {key!r}: data_offsets {offsets!r} are not [begin, end]")
    elements = 1
    for d in shape:
        elements *= d
    bits = elements * SAFETENSORS_DTYPE_BITS[dtype]
    if bits % 8:
        raise bad(f"tensor {key!r}: {elements} x {dtype} does not end on a byte boundary")
    begin, end = offsets
    if end - begin != bits // 8:
        raise bad(
            f"tensor {key!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
            f"shape {shape} x {dtype} needs {bits // 8}"
        )
    return begin, end


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def folder_files(path: Path) -> list[Path]:
    """Every regular file of a model folder, recursively, sorted by relative path.

    Symbolic links to files count (Hugging Face cache snapshots are made of them); hidden
    files and directories (`.git`, `.cache`, `.gitattributes`) are not part of the model: a
    git clone keeps a second copy of every weight under `.git/lfs`. Broken links are left
    out (`broken_links` names them).
    """
    return _walk(path)[0]


def broken_links(path: Path) -> list[str]:
    """Relative paths of the symbolic links in a model folder whose target is missing (or
    that loop), sorted: a Hugging Face snapshot whose blob was deleted, a copied folder whose
    links pointed outside it. Hidden entries are skipped as in `folder_files`."""
    return _walk(path)[1]


def _walk(path: Path) -> tuple[list[Path], list[str]]:
    out: list[tuple[str, Path]] = []
    broken: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        for fn in filenames:
            if fn.startswith("."):
                continue
            p = base / fn
            rel = p.relative_to(path).as_posix()
            try:
                if not stat.S_ISREG(p.stat().st_mode):
                    continue
            except OSError:  # dangling link or a loop
                if p.is_symlink():
                    broken.append(rel)
                continue
            out.append((rel, p))
    out.sort()
    broken.sort()
    return [p for _, p in out], broken


def weight_paths(manifest: ModelManifest) -> list[Path]:
    """Absolute paths of the safetensors files the loaders will read for `manifest`."""
    root = Path(manifest.path)
    return [root / rel for rel in manifest.weight_files]


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _read_json(path: Path, rel: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadModelFolder(f"{rel}: unreadable: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadModelFolder(f"{rel}: not valid JSON ({_one_line(str(exc))})") from exc


def _read_json_object(path: Path, rel: str) -> dict[str, Any]:
    doc = _read_json(path, rel)
    if not isinstance(doc, dict):
        raise BadModelFolder(f"{rel}: not a JSON object")
    return doc


def _component_weights(folder: Path, prefix: str) -> list[str]:
    """Relative paths (under the model root) of the safetensors weights in one module folder.

    Order of preference: single file, sharded index, then the same two for a variant
    (`*.fp16.safetensors`, `*.safetensors.index.fp16.json`). Raises BadModelFolder when none
    is there, with the `.bin`-only case named, as torch pickles are not loaded here.
    """
    where = f"{prefix}/" if prefix else ""
    for stem in _WEIGHT_STEMS:
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [where + single.name]
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            return _shards(folder, index, where)
    for stem in _WEIGHT_STEMS:
        # Variants only: `diffusion_pytorch_model.fp16.safetensors` and friends.
        singles = sorted(folder.glob(f"{stem}.*.safetensors"), key=_variant_rank)
        singles = [s for s in singles if s.name.count(".") == 2 and "-of-" not in s.name]
        if singles:
            return [where + singles[0].name]
        indexes = sorted(folder.glob(f"{stem}.safetensors.index.*.json"), key=_variant_rank)
        if indexes:
            return _shards(folder, indexes[0], where)
    label = prefix or "model"
    if any(folder.glob("*.bin")):
        raise BadModelFolder(f"{label}: only .bin weights; convert to safetensors")
    names = " or ".join(f"{stem}.safetensors" for stem in _WEIGHT_STEMS)
    raise BadModelFolder(f"{label}: no safetensors weights ({names}, or a sharded index)")


def _variant_rank(p: Path) -> tuple[int, str]:
    """fp16, then bf16, then any other variant (`ema`, `non_ema`...) by name."""
    name = p.name
    for rank, variant in enumerate(("fp16", "bf16")):
        if f".{variant}." in name or f".{variant}-" in name:
            return rank, name
    return 2, name


def _shards(folder: Path, index: Path, where: str) -> list[str]:
    rel = where + index.name
    doc = _read_json_object(index, rel)
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadModelFolder(f"{rel}: no weight_map")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise BadModelFolder(f"{rel}: weight_map values must be file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise BadModelFolder(f"{rel}: shard name {shard!r} is not a plain file name")
        if not (folder / shard).is_file():
            raise BadModelFolder(f"{rel}: shard {shard} is missing")
    return [where + s for s in shards]


def _check_shard_maps(root: Path, headers: dict[str, SafetensorsHeader]) -> None:
    """Every tensor an index maps to a shard must be in that shard's header."""
    for index in root.rglob("*.safetensors.index*.json"):
        if any(part.startswith(".") for part in index.relative_to(root).parts):
            continue
        rel = index.relative_to(root).as_posix()
        doc = _read_json_object(index, rel)
        weight_map = doc.get("weight_map")
        if not isinstance(weight_map, dict):
            raise BadModelFolder(f"{rel}: no weight_map")
        prefix = index.parent.relative_to(root).as_posix()
        for tensor, shard in weight_map.items():
            shard_rel = shard if prefix == "." else f"{prefix}/{shard}"
            header = headers.get(shard_rel)
            if header is None:
                raise BadModelFolder(f"{rel}: shard {shard} is missing")
            if tensor not in header.tensors:
                raise CorruptWeights(f"{rel}: tensor {tensor!r} is not in {shard}")


# --------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------


@dataclass
class _Layout:
    kind: ModelKind
    format: ModelFormat
    architecture: str
    weight_files: list[str]
    image_defaults: ImageDefaults | None = None


def _diffusers_layout(root: Path) -> _Layout:
    index = _read_json_object(root / "model_index.json", "model_index.json")
    arch = index.get("_class_name")
    if not isinstance(arch, str) or not arch:
        raise BadModelFolder("model_index.json: no _class_name")
    weights: list[str] = []
    components = 0
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2:
            continue
        if spec[0] is None or spec[1] is None:  # an optional component left out
            continue
        components += 1
        sub = root / name
        if not sub.is_dir():
            raise BadModelFolder(f"component {name} ({spec[0]}.{spec[1]}): subfolder missing")
        if (sub / "config.json").is_file() and not str(spec[1]).endswith(_NOT_MODULE_SUFFIXES):
            _read_json_object(sub / "config.json", f"{name}/config.json")
            weights.extend(_component_weights(sub, name))
    if components == 0:
        raise BadModelFolder("model_index.json: lists no components")
    return _Layout(
        kind=ModelKind.IMAGE,
        format=ModelFormat.DIFFUSERS,
        architecture=arch,
        weight_files=weights,
        image_defaults=_pipeline_image_defaults(root),
    )


def _pipeline_image_defaults(root: Path) -> ImageDefaults:
    """Default width/height from the denoiser's latent `sample_size` times the VAE's
    downsampling factor, so SD 1.5 gets 512, SDXL 1024 and a tiny test pipeline a tiny image.
    Falls back to `ImageDefaults()` when the configs do not say."""
    d = ImageDefaults()
    try:
        vae = json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        for denoiser in ("unet", "transformer"):
            cfg_path = root / denoiser / "config.json"
            if cfg_path.is_file():
                size = json.loads(cfg_path.read_text(encoding="utf-8")).get("sample_size")
                break
        else:
            return d
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return d
    if _is_uint(size) and size > 0:
        return d.model_copy(update={"width": size * factor, "height": size * factor})
    if isinstance(size, list) and len(size) == 2 and all(_is_uint(s) and s > 0 for s in size):
        return d.model_copy(update={"height": size[0] * factor, "width": size[1] * factor})
    return d


def _transformers_layout(root: Path) -> _Layout:
    config = _read_json_object(root / "config.json", "config.json")
    archs = config.get("architectures")
    arch = None
    if isinstance(archs, list):
        arch = next(
            (a for a in archs if isinstance(a, str) and a.endswith(_CAUSAL_LM_SUFFIXES)), None
        )
    if arch is None:
        raise BadModelFolder(
            "no model_index.json or config.json with a causal-LM architecture "
            f"(config.json architectures: {archs!r})"
        )
    if not any((root / t).is_file() for t in _TOKENIZER_FILES):
        raise BadModelFolder("no tokenizer files (tokenizer.json or tokenizer_config.json)")
    return _Layout(
        kind=ModelKind.TEXT,
        format=ModelFormat.TRANSFORMERS,
        architecture=arch,
        weight_files=_component_weights(root, ""),
    )


def _infer_layout(root: Path) -> _Layout:
    if (root / "model_index.json").is_file():
        return _diffusers_layout(root)
    if (root / "config.json").is_file():
        return _transformers_layout(root)
    raise BadModelFolder("no model_index.json or config.json with a causal-LM architecture")


# --------------------------------------------------------------------------------------
# genedge.json
# --------------------------------------------------------------------------------------


class FolderManifest(BaseModel):
    """The optional `genedge.json` of a model folder. Every key is optional; defaults given
    here are merged field by field over the inferred ones (`{"image_defaults": {"steps": 4}}`
    keeps the inferred width and height)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=256)
    kind: ModelKind | None = None
    text_defaults: TextDefaults | None = None
    image_defaults: ImageDefaults | None = None


def _read_folder_manifest(root: Path) -> FolderManifest | None:
    path = root / MANIFEST_FILE
    if not path.exists():
        return None
    doc = _read_json(path, MANIFEST_FILE)
    try:
        return FolderManifest.model_validate(doc)
    except ValidationError as exc:
        raise BadModelFolder(f"{MANIFEST_FILE}: {_summarise(exc)}") from exc


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return _one_line("; ".join(parts) + (f" (and {more} more)" if more > 0 else ""))


def _merge(base: BaseModel | None, override: BaseModel | None) -> Any:
    if override is None:
        return base
    if base is None:
        return override
    return base.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def inspect_folder(path: Path, *, default_id: str | None = None) -> ModelManifest:
    """Describe the model folder at `path`, or raise why it cannot be served.

    The model id is `genedge.json`'s `id`, else `default_id` (a Hugging Face snapshot passes
    its repo id), else the folder name.

    Raises `edge_agent.errors.BadModelFolder` (layout, config or genedge.json problems) or
    `CorruptWeights` (a safetensors file that is truncated or has a broken header).

    `file_digest` is a sha256 over, for every file of the folder sorted by relative path,
    the relative path, size and mtime_ns, plus the raw safetensors header of each weight
    file. Replacing a weight file changes at least its mtime and usually its header (tensor
    names, dtypes, shapes, offsets); hashing headers rather than tensor data keeps the digest
    cheap (a few KB read per file) for 16 GB models. Copying a folder without preserving
    mtimes changes the digest: a cached profile is then measured again, which is safe.
    """
    root = Path(os.path.abspath(path))
    if not root.is_dir():
        raise BadModelFolder(f"{root} is not a directory")
    override = _read_folder_manifest(root)
    if override and override.id:
        model_id, where = override.id, "genedge.json id"
    elif default_id is not None:
        model_id, where = default_id, "repo id"
    else:
        model_id, where = root.name, "folder name"
    if not _ID_RE.match(model_id):
        raise BadModelFolder(
            f"{where} {model_id!r} is not a valid model id (letters, digits and ._+:@- in "
            "/-separated parts, each starting with a letter or digit); rename it or set "
            '"id" in genedge.json'
        )
    files, broken = _walk(root)
    if broken:
        target = os.readlink(root / broken[0])
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise BadModelFolder(
            f"{broken[0]}: broken symbolic link to {target} (its target is missing){more}"
        )
    layout = _infer_layout(root)
    if override and override.kind is not None and override.kind != layout.kind:
        raise BadModelFolder(
            f"{MANIFEST_FILE}: kind {override.kind.value!r} but the folder holds a "
            f"{layout.format.value} {layout.kind.value} model"
        )

    rels = [f.relative_to(root).as_posix() for f in files]
    headers: dict[str, SafetensorsHeader] = {}
    for f, rel in zip(files, rels, strict=True):
        if f.name.endswith(".safetensors"):
            headers[rel] = read_safetensors_header(f, rel)
        elif f.name.endswith("config.json"):  # config, scheduler_config, tokenizer_config...
            _read_json(f, rel)
    missing = [w for w in layout.weight_files if w not in headers]
    if missing:  # a weight file that is hidden or not a regular file
        raise BadModelFolder(f"{missing[0]}: not a regular file")
    _check_shard_maps(root, headers)

    digest = hashlib.sha256()
    total = 0
    weights = set(layout.weight_files)
    for f, rel in zip(files, rels, strict=True):
        try:
            st = f.stat()
        except OSError as exc:
            raise BadModelFolder(f"{rel}: unreadable: {exc.strerror or exc}") from exc
        total += st.st_size
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if rel in weights:
            raw = headers[rel].raw
            digest.update(len(raw).to_bytes(8, "little") + raw)

    if layout.kind == ModelKind.TEXT:
        text_defaults = _merge(TextDefaults(), override.text_defaults if override else None)
        image_defaults = None
        if override and override.image_defaults is not None:
            raise BadModelFolder(f"{MANIFEST_FILE}: image_defaults given for a text model")
    else:
        text_defaults = None
        image_defaults = _merge(
            layout.image_defaults, override.image_defaults if override else None
        )
        if override and override.text_defaults is not None:
            raise BadModelFolder(f"{MANIFEST_FILE}: text_defaults given for an image model")

    return ModelManifest(
        id=model_id,
        kind=layout.kind,
        format=layout.format,
        path=str(root),
        architecture=layout.architecture,
        text_defaults=text_defaults,
        image_defaults=image_defaults,
        weight_files=layout.weight_files,
        storage_bytes=total,
        file_digest=digest.hexdigest(),
    )


def scan_store(root: Path) -> tuple[list[ModelManifest], list[BadModelFolderInfo]]:
    """Inspect every immediate subdirectory of `root`; never raises.

    Hidden directories and those starting with `.` or `_` (`.partial-*` downloads in flight,
    `_trash`) are skipped. Returns the servable models sorted by id and the folders that
    cannot be served, sorted by path, each with a one-line reason. When two folders claim the
    same id, all of them are reported as bad: serving either would be a silent guess.
    """
    root = Path(os.path.abspath(root))
    try:
        entries = sorted(e for e in root.iterdir() if not e.name.startswith((".", "_")))
    except OSError as exc:
        reason = f"store directory unreadable: {exc.strerror or exc}"
        return [], [BadModelFolderInfo(path=str(root), reason=reason)]

    found: list[ModelManifest] = []
    bad: list[BadModelFolderInfo] = []
    for entry in entries:
        try:
            if not entry.is_dir():
                continue
            found.append(inspect_folder(entry))
        except ModelFolderError as exc:
            bad.append(BadModelFolderInfo(path=str(entry), reason=_one_line(exc.message)))
        except Exception as exc:  # a bug or an OS oddity must not stop the agent
            reason = _one_line(f"unexpected {type(exc).__name__}: {exc}")
            bad.append(BadModelFolderInfo(path=str(entry), reason=reason))

    good, dups = without_duplicate_ids(found)
    bad.extend(dups)
    bad.sort(key=lambda b: b.path)
    return good, bad


def without_duplicate_ids(
    found: list[ModelManifest],
) -> tuple[list[ModelManifest], list[BadModelFolderInfo]]:
    """Within one store root, models whose id another folder also claims are all bad:
    serving either would be a silent guess. Returns the rest sorted by id, and the bad ones."""
    by_id: dict[str, list[ModelManifest]] = {}
    for m in found:
        by_id.setdefault(m.id, []).append(m)
    good: list[ModelManifest] = []
    bad: list[BadModelFolderInfo] = []
    for model_id, ms in by_id.items():
        if len(ms) == 1:
            good.extend(ms)
            continue
        folders = ", ".join(Path(m.path).name for m in ms)
        for m in ms:
            reason = f"duplicate model id {model_id!r} (folders {folders})"
            bad.append(BadModelFolderInfo(path=m.path, reason=reason))
    good.sort(key=lambda m: m.id)
    return good, bad
