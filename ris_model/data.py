"""Datasets of simulated scenes: fixed sets, fresh scenes per epoch, and shards on disk.

Every set is a pure function of (SystemConfig values, seed, n): scenes are simulated in
blocks whose seeds are derived from (seed, block), so the same request gives the same
scenes in memory and on disk, whatever the shard size. A cache on disk records the hash
of what made it and is refused, never silently reused, when that differs from what is
asked for (the origin pipeline trained on stale shards after a config change).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ris_model.config import SystemConfig
from ris_model.physics.simulate import SceneBatch, covariance_from_factor, simulate
from ris_model.safe_files import writable_dir, write_atomic

SCHEMA = 1
MANIFEST = "manifest.json"
BLOCK_SIZE = 1024  # scenes simulated per derived seed; part of the data's definition
DEFAULT_SHARD_SIZE = 4096

# What a dataset keeps per scene: every SceneBatch field except R, which is rebuilt from
# R_factor on access (R is N x N per scene: 5 GB for the paper training set, R_factor 0.2 GB).
STORED_FIELDS = tuple(f.name for f in dataclasses.fields(SceneBatch) if f.name != "R")


class StaleDatasetError(ValueError):
    """A cached dataset was made from different settings than the ones asked for."""


# ------------------------------------------------------------------------ hashing
def system_hash(system: SystemConfig) -> str:
    """sha256 of the canonical JSON of the system's values: stable across processes."""
    blob = json.dumps(dataclasses.asdict(system), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def dataset_hash(system: SystemConfig, seed: int, n: int) -> str:
    """What a set of scenes is a function of: the system values, the seed and the count."""
    blob = json.dumps({"schema": SCHEMA, "block_size": BLOCK_SIZE, "system": system_hash(system),
                       "seed": int(seed), "n": int(n)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any JSON-able parts, e.g. (seed, "fresh", epoch, batch)."""
    digest = hashlib.sha256(json.dumps(list(parts), separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------- generation
def simulate_scenes(system: SystemConfig, n: int, seed: int, *, snr_db: Any = None, k: int | None = None,
                    dtype: torch.dtype = torch.complex64) -> dict[str, torch.Tensor]:
    """``n`` scenes as a dict of the STORED_FIELDS tensors (no R), block by block."""
    if n < 1:
        raise ValueError(f"the number of scenes must be >= 1 but got {n=}")
    parts: list[dict[str, torch.Tensor]] = []
    for block, lo in enumerate(range(0, n, BLOCK_SIZE)):
        batch = simulate(system, min(BLOCK_SIZE, n - lo), seed=derive_seed(seed, "block", block),
                         snr_db=snr_db, k=k, dtype=dtype)
        parts.append(_compact(batch))
    return {name: torch.cat([p[name] for p in parts]) for name in STORED_FIELDS}


def _compact(batch: SceneBatch) -> dict[str, torch.Tensor]:
    return {name: getattr(batch, name) for name in STORED_FIELDS}


def scene_row(tensors: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Scene ``i`` of a compact dict as a full row (with R), no batch dimension."""
    row = {name: tensors[name][i] for name in STORED_FIELDS}
    row["R"] = covariance_from_factor(row["R_factor"])
    return row


def collate_scenes(rows: Sequence[dict[str, torch.Tensor]]) -> SceneBatch:
    """DataLoader collate: per-scene dicts (from a SimulatedDataset) -> one SceneBatch."""
    if not rows:
        raise ValueError("cannot collate an empty list of scenes")
    return SceneBatch.from_dict({name: torch.stack([row[name] for row in rows]) for name in rows[0]})


class SimulatedDataset(Dataset):
    """A fixed set of ``n`` scenes simulated once from ``seed``; items are per-scene dicts.

    Use with ``DataLoader(ds, batch_size=..., collate_fn=collate_scenes)``, or take
    :meth:`batch` for all (or some) scenes as one SceneBatch.
    """

    def __init__(self, system: SystemConfig, n: int, seed: int, *, snr_db: Any = None,
                 k: int | None = None, dtype: torch.dtype = torch.complex64,
                 _tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.system, self.n, self.seed = system, n, seed
        self.tensors = _tensors if _tensors is not None else simulate_scenes(
            system, n, seed, snr_db=snr_db, k=k, dtype=dtype)
        if len(self.tensors["y"]) != n:
            raise ValueError(f"dataset tensors hold {len(self.tensors['y'])} scenes but {n=}")

    @classmethod
    def from_tensors(cls, system: SystemConfig, seed: int, tensors: dict[str, torch.Tensor]) -> SimulatedDataset:
        missing = set(STORED_FIELDS) - tensors.keys()
        if missing:
            raise ValueError(f"dataset tensors lack fields {sorted(missing)}")
        return cls(system, len(tensors["y"]), seed, _tensors={k: tensors[k] for k in STORED_FIELDS})

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return scene_row(self.tensors, i)

    def batch(self, idx: slice | Sequence[int] | torch.Tensor | None = None) -> SceneBatch:
        """Scenes ``idx`` (all by default) as one SceneBatch."""
        if idx is None:
            idx = slice(None)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return SceneBatch.from_dict({name: t[idx] for name, t in self.tensors.items()})


# ----------------------------------------------------------------- fresh scenes
def fresh_batches(system: SystemConfig, batch_size: int, seed: int, epoch: int, *,
                  n_batches: int | None = None, snr_db: Any = None, k: int | None = None,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.complex64) -> Iterator[SceneBatch]:
    """Batches of new scenes, a pure function of (seed, epoch, batch index); endless when
    ``n_batches`` is None."""
    if batch_size < 1 or (n_batches is not None and n_batches < 0):
        raise ValueError(f"need batch_size >= 1 and n_batches >= 0 but got {batch_size=}, {n_batches=}")
    i = 0
    while n_batches is None or i < n_batches:
        yield simulate(system, batch_size, seed=derive_seed(seed, "fresh", epoch, i), snr_db=snr_db,
                       k=k, device=device, dtype=dtype)
        i += 1


class FreshScenes(IterableDataset):
    """New scenes every epoch, as whole SceneBatches; use ``DataLoader(ds, batch_size=None)``.

    Call :meth:`set_epoch` before each epoch. Batch i of an epoch is the same whatever the
    number of workers: worker w simulates the batches i with i % workers == w, and the
    DataLoader takes workers in turn, so the order is kept too.
    """

    def __init__(self, system: SystemConfig, batch_size: int, n_batches: int, seed: int, *,
                 snr_db: Any = None, k: int | None = None, dtype: torch.dtype = torch.complex64) -> None:
        if batch_size < 1 or n_batches < 1:
            raise ValueError(f"need batch_size >= 1 and n_batches >= 1 but got {batch_size=}, {n_batches=}")
        self.system, self.batch_size, self.n_batches, self.seed = system, batch_size, n_batches, seed
        self.snr_db, self.k, self.dtype = snr_db, k, dtype
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[SceneBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(worker, self.n_batches, workers):
            yield simulate(self.system, self.batch_size, seed=derive_seed(self.seed, "fresh", self.epoch, i),
                           snr_db=self.snr_db, k=self.k, dtype=self.dtype)


# --------------------------------------------------------------------- on disk
def write_dataset(system: SystemConfig, n: int, seed: int, out_dir: str | Path, *,
                  shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False) -> Path:
    """Simulate ``n`` scenes and write ``shard-00000.pt``... and ``manifest.json``; returns out_dir.

    Shards are plain dicts of tensors (loadable with ``weights_only=True``). The manifest is
    written last, atomically: a directory without one is an unfinished write. Every file
    goes through an exclusive temporary (`ris_model.safe_files`): a planted link is never
    followed, and an unwritable folder fails before any scene is simulated.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 but got {shard_size=}")
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset; load it with load_dataset() or pass overwrite=True")
    writable_dir(out)
    for old in list(out.glob("shard-*.pt")) + [out / MANIFEST]:
        old.unlink(missing_ok=True)
    tensors = simulate_scenes(system, n, seed)
    shards = []
    for idx, lo in enumerate(range(0, n, shard_size)):
        name = f"shard-{idx:05d}.pt"
        part = {key: t[lo:lo + shard_size].contiguous() for key, t in tensors.items()}
        write_atomic(out / name, functools.partial(_save_to, part))
        shards.append({"file": name, "n": len(part["y"]), "sha256": _file_sha256(out / name)})
    manifest = {
        "schema": SCHEMA, "config_hash": dataset_hash(system, seed, n), "n": n, "seed": seed,
        "shards": shards, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": system.preset, "system": dataclasses.asdict(system),
    }
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return out


def _save_to(obj: Any, fh: Any) -> None:
    torch.save(obj, fh)


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {Path(out_dir)}; write the dataset with write_dataset() first")
    return json.loads(path.read_text())


def load_dataset(out_dir: str | Path, system: SystemConfig | None = None,
                 seed: int | None = None) -> SimulatedDataset:
    """The dataset in ``out_dir``; refuses (StaleDatasetError) if it was made from a different
    system or seed than the ones given, or if its files do not match its manifest."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    regen = f"regenerate it with write_dataset(system, n, seed, {str(out)!r}, overwrite=True)"
    if manifest.get("schema") != SCHEMA:
        raise StaleDatasetError(f"dataset in {out} has schema {manifest.get('schema')!r}, "
                                f"this code reads schema {SCHEMA}; {regen}")
    try:
        stored = SystemConfig(**manifest["system"])
    except (KeyError, TypeError):  # written by a version of the code with other system fields
        stored = None
    n, stored_seed = int(manifest["n"]), int(manifest["seed"])
    if stored is None or dataset_hash(stored, stored_seed, n) != manifest["config_hash"]:
        raise StaleDatasetError(f"dataset in {out} has a manifest whose config_hash does not match its "
                                f"recorded settings; {regen}")
    wanted_system = system if system is not None else stored
    wanted_seed = int(seed) if seed is not None else stored_seed
    if dataset_hash(wanted_system, wanted_seed, n) != manifest["config_hash"]:
        diffs = [f"system.{k}={a!r} (requested {b!r})" for k, a, b in _system_diffs(stored, wanted_system)]
        if wanted_seed != stored_seed:
            diffs.append(f"seed={stored_seed} (requested {wanted_seed})")
        raise StaleDatasetError(f"dataset in {out} was made with {', '.join(diffs) or 'other settings'}; {regen}")
    parts = []
    for shard in manifest["shards"]:
        path = out / shard["file"]
        if not path.is_file() or _file_sha256(path) != shard["sha256"]:
            raise StaleDatasetError(f"shard {path} is missing or does not match its checksum in the manifest; {regen}")
        parts.append(torch.load(path, weights_only=True, map_location="cpu"))
    tensors = {key: torch.cat([p[key] for p in parts]) for key in STORED_FIELDS}
    if len(tensors["y"]) != n:
        raise StaleDatasetError(f"dataset in {out} holds {len(tensors['y'])} scenes but its manifest says {n}; {regen}")
    return SimulatedDataset.from_tensors(wanted_system, wanted_seed, tensors)


def load_or_write_dataset(system: SystemConfig, n: int, seed: int, out_dir: str | Path, *,
                          shard_size: int = DEFAULT_SHARD_SIZE) -> SimulatedDataset:
    """Load the cache in ``out_dir`` if it exists and matches; write it if there is none.

    A cache that exists but does not match raises StaleDatasetError: the directory may be
    someone's data, so it is not overwritten behind their back.
    """
    if not (Path(out_dir) / MANIFEST).exists():
        write_dataset(system, n, seed, out_dir, shard_size=shard_size)
    ds = load_dataset(out_dir, system=system, seed=seed)
    if len(ds) != n:
        raise StaleDatasetError(f"dataset in {Path(out_dir)} holds n={len(ds)} scenes (requested {n}); "
                                f"regenerate it with write_dataset(system, n, seed, {str(out_dir)!r}, overwrite=True)")
    return ds


def _system_diffs(a: SystemConfig, b: SystemConfig) -> list[tuple[str, Any, Any]]:
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return [(k, da[k], db.get(k)) for k in da if da[k] != db.get(k)]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "BLOCK_SIZE", "FreshScenes", "SCHEMA", "STORED_FIELDS", "SimulatedDataset", "StaleDatasetError",
    "collate_scenes", "dataset_hash", "derive_seed", "fresh_batches", "load_dataset", "load_or_write_dataset",
    "read_manifest", "scene_row", "simulate_scenes", "system_hash", "write_dataset",
]
