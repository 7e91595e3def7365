"""Datasets: fixed sets, fresh scenes per epoch, shards on disk and stale-cache refusal."""

import dataclasses
import json

import pytest
import torch
from torch.utils.data import DataLoader

from ris_model.config import load_config
from ris_model.data import (
    FreshScenes,
    SimulatedDataset,
    StaleDatasetError,
    collate_scenes,
    fresh_batches,
    load_dataset,
    load_or_write_dataset,
    system_hash,
    write_dataset,
)
from ris_model.physics import SceneBatch

TINY = load_config("tiny").system


def _same(a: SceneBatch, b: SceneBatch) -> bool:
    return all(torch.equal(v, getattr(b, k)) for k, v in a.as_dict().items())


def test_simulated_dataset_is_a_function_of_seed():
    a, b, c = SimulatedDataset(TINY, 12, seed=1), SimulatedDataset(TINY, 12, seed=1), SimulatedDataset(TINY, 12, seed=2)
    assert len(a) == 12
    assert _same(a.batch(), b.batch())
    assert not torch.equal(a.batch().y, c.batch().y)


def test_rows_collate_back_into_the_batch():
    ds = SimulatedDataset(TINY, 10, seed=3)
    row = ds[4]
    assert row["y"].shape == (TINY.snapshots, TINY.bs_antennas)
    torch.testing.assert_close(row["R"], row["R_factor"] @ row["R_factor"].mH)
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_scenes)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert _same(SceneBatch.cat(batches), ds.batch())
    assert _same(ds.batch([1, 3]), ds.batch()[[1, 3]])
    # R of a dataset row is the covariance target: Hermitian, trace N.
    R = ds.batch().R
    torch.testing.assert_close(R, R.mH)
    torch.testing.assert_close(R.diagonal(dim1=-2, dim2=-1).real.sum(-1), torch.full((10,), 16.0))


def test_write_load_round_trip(tmp_path):
    out = write_dataset(TINY, 25, 4, tmp_path / "ds", shard_size=10)
    shards = sorted(p.name for p in out.glob("shard-*.pt"))
    assert shards == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"schema", "config_hash", "n", "seed", "shards", "created", "preset"} <= manifest.keys()
    assert manifest["n"] == 25 and manifest["seed"] == 4 and manifest["preset"] == "tiny"
    # Shards are plain tensor dicts: they load with weights_only=True.
    part = torch.load(out / "shard-00002.pt", weights_only=True)
    assert part["y"].shape[0] == 5
    loaded = load_dataset(out, TINY, seed=4)
    assert _same(loaded.batch(), SimulatedDataset(TINY, 25, seed=4).batch())
    assert _same(load_dataset(out).batch(), loaded.batch())  # no expectation: just what is there


def test_stale_cache_is_refused_with_the_difference_named(tmp_path):
    out = write_dataset(TINY, 8, 0, tmp_path / "ds", shard_size=8)
    with pytest.raises(StaleDatasetError, match=r"snapshots=32 \(requested 64\).*write_dataset"):
        load_dataset(out, dataclasses.replace(TINY, snapshots=64), seed=0)
    with pytest.raises(StaleDatasetError, match=r"seed=0 \(requested 1\)"):
        load_dataset(out, TINY, seed=1)
    assert isinstance(StaleDatasetError("x"), ValueError)


def test_tampered_or_incomplete_cache_is_refused(tmp_path):
    out = write_dataset(TINY, 8, 0, tmp_path / "ds", shard_size=4)
    torch.save({"y": torch.zeros(1)}, out / "shard-00001.pt")
    with pytest.raises(StaleDatasetError, match="checksum"):
        load_dataset(out, TINY, seed=0)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["system"]["snapshots"] = 99  # edited by hand: no longer matches its own hash
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleDatasetError, match="config_hash"):
        load_dataset(out)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_dataset(tmp_path / "nothing")


def test_existing_dataset_is_not_overwritten_silently(tmp_path):
    out = write_dataset(TINY, 4, 0, tmp_path / "ds")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dataset(TINY, 4, 1, out)
    write_dataset(TINY, 4, 1, out, overwrite=True)
    assert load_dataset(out, TINY, seed=1).seed == 1


def test_load_or_write(tmp_path):
    path = tmp_path / "cache"
    first = load_or_write_dataset(TINY, 6, 5, path)
    again = load_or_write_dataset(TINY, 6, 5, path)
    assert _same(first.batch(), again.batch())
    with pytest.raises(StaleDatasetError):
        load_or_write_dataset(dataclasses.replace(TINY, rician_k=2.0), 6, 5, path)
    with pytest.raises(StaleDatasetError, match="n=6"):
        load_or_write_dataset(TINY, 7, 5, path)


def test_system_hash_tracks_every_value():
    assert system_hash(TINY) == system_hash(load_config("tiny").system)
    changed = {f.name: system_hash(dataclasses.replace(TINY, **{f.name: _other(getattr(TINY, f.name))}))
               for f in dataclasses.fields(TINY)}
    assert system_hash(TINY) not in changed.values()
    assert len(set(changed.values())) == len(changed)


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return value + "x"


def test_fresh_batches_are_reproducible_per_seed_and_epoch():
    e0 = list(fresh_batches(TINY, 4, seed=7, epoch=0, n_batches=3))
    e0_again = list(fresh_batches(TINY, 4, seed=7, epoch=0, n_batches=3))
    e1 = list(fresh_batches(TINY, 4, seed=7, epoch=1, n_batches=3))
    assert len(e0) == 3 and all(len(b) == 4 for b in e0)
    assert all(_same(a, b) for a, b in zip(e0, e0_again))
    assert not any(torch.equal(a.y, b.y) for a, b in zip(e0, e1))
    assert not torch.equal(e0[0].y, e0[1].y)


def test_fresh_scenes_dataset_matches_fresh_batches_with_workers():
    stream = FreshScenes(TINY, batch_size=3, n_batches=4, seed=2)
    stream.set_epoch(5)
    expected = list(fresh_batches(TINY, 3, seed=2, epoch=5, n_batches=4))
    for workers in (0, 2):
        got = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(got) == 4
        assert all(_same(a, b) for a, b in zip(got, expected))


def test_fresh_batches_without_a_count_are_endless():
    import itertools
    stream = fresh_batches(TINY, 2, seed=7, epoch=0)
    assert _same(next(itertools.islice(stream, 4, None)), list(fresh_batches(TINY, 2, 7, 0, n_batches=5))[4])
