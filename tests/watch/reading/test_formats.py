"""Lightning CSVLogger and TensorBoard event files as metrics sources."""

from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.watch.reading import BadLine, CsvMetricsTail, KeyMap, TensorBoardTail, detect_format, parse_event
from healthcheck.watch.reading.tensorboard import crc32c, masked_crc32c

# ---------------------------------------------------------------------------------- CSV
# What Lightning's CSVLogger writes for self.log("train_loss", on_step=True, on_epoch=True),
# self.log("val_loss") and a LearningRateMonitor with two param groups: one row per
# log_metrics call, empty cells elsewhere.
LIGHTNING_CSV = """\
epoch,lr-AdamW,lr-AdamW/pg1,step,train_loss_epoch,train_loss_step,val_loss
,0.001,0.0001,0,,,
0,,,0,,2.5,
,0.001,0.0001,1,,,
0,,,1,,2.25,
0,,,1,,,2.4
0,,,1,2.4,,
,0.002,0.0002,2,,,
1,,,2,,2.0,
"""


def csv_lines(text, keys=None, tmp_path=None):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    return list(CsvMetricsTail(path, keys).poll())


def test_lightning_csv_rows_become_metrics_lines(tmp_path):
    lines = csv_lines(LIGHTNING_CSV, tmp_path=tmp_path)
    steps = [x for x in lines if x["kind"] == "step"]
    assert [(x["step"], x["loss"]) for x in steps] == [(0, 2.5), (1, 2.25), (2, 2.0)]
    # the learning rate rows come first; each step carries the latest, one value per group
    assert [x["lr"] for x in steps] == [[1e-3, 1e-4], [1e-3, 1e-4], [2e-3, 2e-4]]
    assert [(x["step"], x["loss"]) for x in lines if x["kind"] == "eval"] == [(1, 2.4)]
    assert [(x["step"], x["loss"]) for x in lines if x["kind"] == "epoch"] == [(1, 2.4)]
    assert all(x["epoch"] in (0, 1) for x in steps)


def test_csv_key_options_pick_other_columns(tmp_path):
    text = "it,myloss,mylr,valid\n0,1.0,0.5,\n1,0.0,0.5,\n1,,,0.3\n"
    lines = csv_lines(text, KeyMap(loss="myloss", lr="mylr", step="it", val_loss="valid"), tmp_path)
    assert [(x["kind"], x["step"], x["loss"]) for x in lines] == [
        ("step", 0, 1.0), ("step", 1, 0.0), ("eval", 1, 0.3)]
    assert lines[0]["lr"] == [0.5]


def test_csv_missing_named_key_is_reported(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss\n0,1.0\n")
    tail = CsvMetricsTail(path, KeyMap(loss="trian_loss"))
    list(tail.poll())
    assert tail.missing_keys == ["--loss-key='trian_loss'"]


def test_csv_header_rewrite_does_not_repeat_rows(tmp_path):
    """CSVLogger rewrites the file with a wider header when a new metric appears."""
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss\n0,1.0\n1,0.9\n")
    tail = CsvMetricsTail(path)
    assert [x["step"] for x in tail.poll()] == [0, 1]
    path.write_text("step,train_loss,val_loss\n0,1.0,\n1,0.9,\n1,,0.95\n2,0.8,\n")
    got = list(tail.poll())
    assert [(x["kind"], x["step"]) for x in got] == [("eval", 1), ("step", 2)]


def test_csv_bad_row_is_reported_and_skipped(tmp_path):
    lines = csv_lines("step,train_loss\n0,1.0\n1,abc\n2,0.5,7\n3,0.4\n", tmp_path=tmp_path)
    assert [x["step"] for x in lines if not isinstance(x, BadLine)] == [0, 3]
    assert [x.line_no for x in lines if isinstance(x, BadLine)] == [3, 4]


def test_csv_run_judged_by_the_cli(tmp_path):
    run = tmp_path / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    rows = ["step,epoch,train_loss,lr-SGD"] + [f"{i},0,{1.0 / (i + 1)},0.1" for i in range(30)]
    rows.append("30,0,nan,0.1")
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(str(tmp_path / "lightning_logs")) == "csv"  # finds version_N/
    res = CliRunner().invoke(cli, ["watch", str(run), "--json"])
    assert res.exit_code == 1, res.output
    verdict = json.loads(res.stdout)
    assert [e["code"] for e in verdict["events"]] == ["loss.nonfinite"]
    assert verdict["last"]["step"] == 30 and verdict["last"]["lr"] == [0.1]


# --------------------------------------------------------------------------- TensorBoard
def test_crc32c_matches_the_published_check_values():
    # RFC 3720 B.4 / the CRC catalogue: CRC-32C("123456789") and 32 zero bytes.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA


@pytest.fixture(scope="module")
def event_class():
    """An `Event` message class built from the field numbers of tensorboard's .proto files,
    so the encoding comes from protobuf itself, not from the reader under test."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="hc_test_event.proto", package="hctest")
    F = descriptor_pb2.FieldDescriptorProto

    def msg(name, *fields):
        m = f.message_type.add(name=name)
        for fname, num, typ, label, tname in fields:
            fd = m.field.add(name=fname, number=num, type=typ, label=label)
            if tname:
                fd.type_name = tname
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("TensorProto", ("dtype", 1, F.TYPE_INT32, opt, None),
        ("tensor_content", 4, F.TYPE_BYTES, opt, None),
        ("float_val", 5, F.TYPE_FLOAT, rep, None), ("double_val", 6, F.TYPE_DOUBLE, rep, None))
    msg("Value", ("tag", 1, F.TYPE_STRING, opt, None), ("simple_value", 2, F.TYPE_FLOAT, opt, None),
        ("tensor", 8, F.TYPE_MESSAGE, opt, ".hctest.TensorProto"))
    msg("Summary", ("value", 1, F.TYPE_MESSAGE, rep, ".hctest.Value"))
    msg("Event", ("wall_time", 1, F.TYPE_DOUBLE, opt, None), ("step", 2, F.TYPE_INT64, opt, None),
        ("file_version", 3, F.TYPE_STRING, opt, None),
        ("summary", 5, F.TYPE_MESSAGE, opt, ".hctest.Summary"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("hctest.Event"))


def record(payload: bytes) -> bytes:
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", masked_crc32c(head)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def scalar_event(Event, step, tags, *, tensor=False, wall=1.7e9):
    ev = Event(wall_time=wall + step, step=step)
    for tag, value in tags.items():
        v = ev.summary.value.add(tag=tag)
        if tensor:
            v.tensor.dtype = 1
            v.tensor.float_val.append(value)
        else:
            v.simple_value = value
    return ev.SerializeToString()


def test_parse_event_reads_simple_and_tensor_scalars(event_class):
    wall, step, scalars = parse_event(scalar_event(event_class, 7, {"train/loss": 0.5}))
    assert (wall, step, scalars) == (1.7e9 + 7, 7, [("train/loss", 0.5)])
    _, _, scalars = parse_event(scalar_event(event_class, 3, {"loss": 0.25}, tensor=True))
    assert scalars == [("loss", 0.25)]
    assert parse_event(event_class(wall_time=1.0, file_version="brain.Event:2").SerializeToString()) == (1.0, 0, [])


def test_tensorboard_dir_tailed_with_torn_records(tmp_path, event_class):
    path = tmp_path / "events.out.tfevents.1700000000.host.1.0"
    header = record(event_class(wall_time=1.0, file_version="brain.Event:2").SerializeToString())
    recs = [record(scalar_event(event_class, i, {"train/loss": 1.0 / (i + 1), "lr": 0.01}))
            for i in range(5)]
    blob = header + b"".join(recs)
    cut = len(header) + len(recs[0]) + len(recs[1]) + 5  # in the middle of record 2
    path.write_bytes(blob[:cut])
    tail = TensorBoardTail(tmp_path)
    first = list(tail.poll())
    assert [(x["step"], x["loss"]) for x in first] == [(0, 1.0), (1, 0.5)]
    assert first[0]["lr"] == [pytest.approx(0.01)]
    with open(path, "ab") as fh:
        fh.write(blob[cut:])
    assert [x["step"] for x in tail.poll()] == [2, 3, 4]


def test_tensorboard_corrupt_payload_is_reported_and_skipped(tmp_path, event_class):
    path = tmp_path / "events.out.tfevents.1.host"
    good = record(scalar_event(event_class, 0, {"loss": 1.0}))
    bad = bytearray(record(scalar_event(event_class, 1, {"loss": 2.0})))
    bad[14] ^= 0xFF  # flip a payload byte: its crc no longer matches
    path.write_bytes(good + bytes(bad) + record(scalar_event(event_class, 2, {"loss": 3.0})))
    items = list(TensorBoardTail(tmp_path).poll())
    assert [x["step"] for x in items if not isinstance(x, BadLine)] == [0, 2]
    assert sum(isinstance(x, BadLine) for x in items) == 1


def test_tensorboard_run_judged_by_the_cli(tmp_path, event_class):
    run = tmp_path / "tb"
    run.mkdir()
    recs = [record(scalar_event(event_class, i, {"train/loss": 0.0, "lr": 0.01})) for i in range(40)]
    (run / "events.out.tfevents.1.host").write_bytes(b"".join(recs))
    res = CliRunner().invoke(cli, ["watch", str(run), "--json", "--fail-on", "warning"])
    verdict = json.loads(res.stdout)
    assert verdict["reader"]["format"] == "tensorboard"
    assert "loss.constant" in {e["code"] for e in verdict["events"]}
    assert res.exit_code == 1


def test_tensorboard_run_reported_by_the_cli(tmp_path, event_class):
    run = tmp_path / "tb"
    run.mkdir()
    recs = [record(scalar_event(event_class, i, {"train/loss": 0.0, "lr": 0.01})) for i in range(40)]
    (run / "events.out.tfevents.1.host").write_bytes(b"".join(recs))
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    html = (run / "report.html").read_text()
    assert "<td>format</td><td>tensorboard</td>" in html and "<code>loss.constant</code>" in html
    assert html.count('src="data:image/png;base64,') == len(list((run / "report").glob("*.png"))) > 0


def test_a_mistyped_loss_key_is_a_usage_error_naming_the_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,train_loss\n0,1.0\n")
    res = CliRunner().invoke(cli, ["watch", str(tmp_path), "--loss-key", "trainloss"])
    assert res.exit_code == 2
    assert "--loss-key='trainloss'" in res.output and "train_loss" in res.output
