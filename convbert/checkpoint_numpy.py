"""ConvBERT checkpoints as NumPy arrays, without PyTorch: what the TensorFlow models read and write.

Reads the layouts :mod:`convbert.pretrained` and transformers write -- ``model.safetensors``, a
sharded ``model.safetensors.index.json``, the legacy ``pytorch_model.bin`` (torch's zip format) and
its sharded ``pytorch_model.bin.index.json`` -- into ``{name: numpy.ndarray}`` in the PyTorch
layout, and writes ``model.safetensors`` the PyTorch classes (and transformers) load.

Nothing read can run code: safetensors and JSON are data, and ``pytorch_model.bin`` is unpickled by
:class:`_TorchZipUnpickler`, which knows the handful of globals a state dict needs (torch's tensor
rebuild functions, its storage classes, ``collections.OrderedDict``), maps them to NumPy, and
refuses every other global. Neither torch nor anything that imports it is imported here.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# Written by convbert-train while it moves a final model's files into place (see convbert.pretrained):
# while it exists the directory's files may come from different saves, so they are not loaded.
INCOMPLETE_SAVE_MARKER = "FINAL_SAVE_INCOMPLETE"

# Buffers that older checkpoints carry and the models derive instead.
IGNORED_KEYS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (unreadable file, bad shapes)."""


# ---- safetensors ---------------------------------------------------------------------------------

def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32: the same numbers, exactly (NumPy has no bfloat16)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"could not read weights from {path}: not a safetensors file (truncated)")
        (size,) = struct.unpack("<Q", head)
        if size > 100_000_000:
            raise CheckpointError(f"could not read weights from {path}: implausible header size {size}")
        raw = f.read(size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"could not read weights from {path}: corrupt safetensors header ({exc})") from exc
    if len(raw) != size or not isinstance(header, dict):
        raise CheckpointError(f"could not read weights from {path}: corrupt safetensors header")
    return header, 8 + size


def _read_safetensors_bf16(path: Path, header: dict[str, Any], start: int) -> dict[str, np.ndarray]:
    """Read a safetensors file holding bfloat16 tensors (which ``safetensors.numpy`` cannot), as float32."""
    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    data = path.read_bytes()
    state = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(dtypes[info["dtype"]]).newbyteorder("<")
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"could not read weights from {path}: bad header entry {name!r}: {info!r}") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= len(data) - start) or end - begin != count * dtype.itemsize:
            raise CheckpointError(f"could not read weights from {path}: tensor {name!r} lies outside the file "
                                  "(truncated or corrupt?)")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
        state[name] = _bfloat16_to_float32(array) if info["dtype"] == "BF16" else array.astype(dtype.newbyteorder("="))
    return state


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as NumPy arrays (bfloat16 ones as float32).

    Raises CheckpointError naming the file when it is truncated, corrupt or of an unknown dtype.
    """
    path = Path(path)
    header, start = _safetensors_header(path)
    if any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values()):
        return _read_safetensors_bf16(path, header, start)
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise CheckpointError(f"could not read weights from {path} (truncated or corrupt?): {exc}") from exc


def save_safetensors(state: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write ``{name: array}`` to ``path`` with ``safetensors.numpy`` (metadata ``format: pt``, as
    PyTorch checkpoints carry), through a temporary file renamed into place."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    return path


# ---- pytorch_model.bin (torch's zip format), without torch ----------------------------------------

# torch's storage classes, by the name pickles use, and the NumPy dtype of their elements
# (bfloat16 is read as its uint16 bit patterns and converted to float32).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for one of torch's storage classes in a pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage read from the archive: a flat array of ``numel`` elements."""

    def __init__(self, storage_type: _StorageType, data: np.ndarray):
        self.storage_type = storage_type
        self.data = data


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2 over NumPy: a strided view of the storage, copied."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor must be rebuilt from a storage, got {type(storage).__name__}")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride))):
        raise pickle.UnpicklingError(
            f"bad tensor geometry: offset {storage_offset!r}, size {size!r}, stride {stride!r}")
    data = storage.data
    if 0 in size:
        out = np.zeros(size, dtype=data.dtype)
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise pickle.UnpicklingError(
                f"tensor of size {size} reads past the end of its storage ({data.size} elements)")
        base = data[storage_offset:]
        out = np.lib.stride_tricks.as_strided(base, shape=size, strides=[s * data.itemsize for s in stride]).copy()
    if storage.storage_type.name == "BFloat16Storage":
        out = _bfloat16_to_float32(out)
    return out


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_state):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data here."""
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _TorchZipUnpickler(pickle.Unpickler):
    """Unpickles the ``data.pkl`` of a torch zip archive into NumPy arrays; refuses any other global."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: Path):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._path} refers to {module}.{name}, which a state dict of tensors does not need: refusing to "
                "load it (only torch's tensor rebuild functions, its storage classes and OrderedDict are allowed)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            if not re.fullmatch(r"[0-9A-Za-z_.-]+", key):
                raise pickle.UnpicklingError(f"bad storage key {key!r}")
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key!r} is missing from the archive") from None
            dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key!r} holds {len(raw)} bytes, fewer than its "
                                             f"{numel} elements need")
            data = np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype)
            self._storages[key] = _Storage(storage_type, data)
        return self._storages[key]


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``-d state dict (zip format, torch >= 1.6) as NumPy arrays, without torch.

    bfloat16 tensors come back as float32. Raises CheckpointError naming the file when it is not a
    torch zip archive (the pre-1.6 format is refused), is corrupt, refers to anything but tensors
    (no code in it is run), or is not a dict of named tensors.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"could not read weights from {path}: not a torch zip archive (files saved by torch "
                              "< 1.6 or with _use_new_zipfile_serialization=False cannot be read without torch; "
                              "re-save them, preferably as model.safetensors)")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if PurePosixPath(n).name == "data.pkl"
                       and len(PurePosixPath(n).parts) == 2]
            if len(pickles) != 1:
                raise CheckpointError(f"could not read weights from {path}: expected one <archive>/data.pkl, "
                                      f"found {pickles}")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise CheckpointError(f"could not read weights from {path}: unknown byte order {byteorder!r}")
            with archive.open(pickles[0]) as f:
                state = _TorchZipUnpickler(f, archive, prefix, byteorder, path).load()
    except CheckpointError:
        raise
    except Exception as exc:  # UnpicklingError, zipfile.BadZipFile, EOFError, ...
        raise CheckpointError(f"could not read weights from {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a named tensor")
    return dict(state)


# ---- checkpoint directories -------------------------------------------------------------------------

def _read_shard_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file) of a sharded checkpoint, each shard a file inside its
    directory by name (no absolute path, no ``..``; links are not resolved, so a Hugging Face cache
    snapshot linking into its ``blobs/`` still loads)."""
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{index} is not a valid JSON file: {exc}") from exc
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f'{index} has no "weight_map" object (tensor name -> shard file)')
    for name, shard in weight_map.items():
        parts = Path(shard).parts if isinstance(shard, str) and shard else None
        if not parts or Path(shard).is_absolute() or Path(shard).anchor or ".." in parts:
            raise CheckpointError(f'{index}: "weight_map" entry {name!r} -> {shard!r} is not a file inside '
                                  f"{index.parent}")
    return weight_map


def read_sharded(index: Path, read_shard) -> dict[str, Any]:
    """Every tensor of the sharded checkpoint whose index file is ``index``, each shard read by
    ``read_shard(path) -> {name: tensor}`` (NumPy here, torch in :mod:`convbert.pretrained`); refuses
    shards outside the directory, missing, overlapping or not holding what the index says."""
    weight_map = _read_shard_index(index)
    directory = index.parent
    state: dict[str, Any] = {}
    found_in: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
            raise CheckpointError(f"{index} lists shard {shard!r}, which is not in {directory}")
        for name, array in read_shard(directory / shard).items():
            if name in found_in:
                raise CheckpointError(f"{index}: tensor {name!r} is in two shards, {found_in[name]!r} and {shard!r}")
            found_in[name] = shard
            state[name] = array
    for name, shard in weight_map.items():
        if found_in.get(name) != shard:
            raise CheckpointError(f"{index} puts tensor {name!r} in {shard!r}, but that shard does not hold it")
    return state


def refuse_incomplete_save(directory: Path) -> None:
    """Raise CheckpointError (quoting the marker's text) when ``directory`` holds an interrupted save."""
    marker = directory / INCOMPLETE_SAVE_MARKER
    if marker.exists():
        try:
            why = marker.read_text(errors="replace").strip()
        except OSError:
            why = ""
        raise CheckpointError(f"{directory} holds an interrupted save ({INCOMPLETE_SAVE_MARKER}): its weights may "
                              f"come from different steps, so they are not loaded. {why}".strip())


def load_numpy_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every weight of a checkpoint directory as NumPy arrays, in the PyTorch layout and names.

    Looks for, in order, ``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin``
    and ``pytorch_model.bin.index.json``. Raises FileNotFoundError when there are none, and
    CheckpointError (naming the file) when they cannot be read, a shard index is malformed, leaves
    the directory or has overlapping shards, and when the directory is marked as an interrupted
    save (``FINAL_SAVE_INCOMPLETE``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    refuse_incomplete_save(directory)
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return read_safetensors(directory / SAFE_WEIGHTS_NAME)
    if (directory / SAFE_WEIGHTS_INDEX_NAME).is_file():
        return read_sharded(directory / SAFE_WEIGHTS_INDEX_NAME, read_safetensors)
    if (directory / WEIGHTS_NAME).is_file():
        return read_torch_bin(directory / WEIGHTS_NAME)
    if (directory / WEIGHTS_INDEX_NAME).is_file():
        return read_sharded(directory / WEIGHTS_INDEX_NAME, read_torch_bin)
    raise FileNotFoundError(f"no weights in {directory}: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
                            f"{WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def map_checkpoint_keys(state: dict[str, Any], model_keys, prefix: str = "convbert") -> dict[str, Any]:
    """Add or strip the backbone ``prefix`` (``convbert.``) so a checkpoint's keys name ``model_keys``.

    A head model's keys carry the prefix and a bare backbone's do not; either checkpoint loads into
    either model. The values pass through untouched (NumPy arrays here, torch tensors in
    :mod:`convbert.pretrained`). The derived ``embeddings.position_ids`` / ``token_type_ids`` buffers are dropped.
    """
    prefix = prefix + "."
    model_is_head = any(k.startswith(prefix) for k in model_keys)
    checkpoint_is_head = any(k.startswith(prefix) for k in state)
    mapped = {}
    for key, value in state.items():
        if IGNORED_KEYS.search(key):
            continue
        if model_is_head and not checkpoint_is_head:
            key = prefix + key
        elif not model_is_head and checkpoint_is_head and key.startswith(prefix):
            key = key[len(prefix):]
        mapped[key] = value
    return mapped
