"""The training reader's frame decoding: the fast decoder must give PIL's pixels exactly,
so a faster reader never changes what a model is trained on."""

import collections
import io
import random
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from meldflow.training import dataset
from meldflow.training.dataset import decode_jpeg, decode_jpeg_pil, frames_image

CELLS = [(16, 32), (16, 16), (64, 36), (32, 18), (1, 1), (8, 8), (60, 40), (129, 73),
         (192, 384), (300, 300)]


def jpeg(width, height, mode="RGB", seed=0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 120, width)[None, :, None]
    pixels = (rng.random((height, width, 3)) * 120 + ramp).astype(np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    img.save(out, "JPEG", **save)
    return out.getvalue()


def test_simplejpeg_is_installed():
    # Without it the reader silently falls back to PIL, about 1.5x slower (bench_train.py).
    assert dataset._simplejpeg is not None


@pytest.mark.parametrize("size", [(256, 144), (144, 256), (250, 141), (255, 143), (33, 17),
                                  (1280, 720), (7, 5)])
@pytest.mark.parametrize("form", [
    {"quality": 90}, {"quality": 40, "subsampling": 0}, {"quality": 95, "subsampling": 1},
    {"quality": 75, "progressive": True}, {"mode": "L", "quality": 80},
])
def test_fast_decoder_gives_pils_pixels_at_every_scale(size, form):
    form = dict(form)
    data = jpeg(*size, mode=form.pop("mode", "RGB"), **form)
    for cell in [*CELLS, None]:
        fast, slow = decode_jpeg(data, cell), decode_jpeg_pil(data, cell)
        assert fast.mode == slow.mode == "RGB"
        assert fast.size == slow.size, (size, cell)
        assert np.array_equal(np.asarray(fast), np.asarray(slow)), (size, form, cell)


def test_frame_grids_unchanged_with_and_without_augmentation(monkeypatch):
    frames = [jpeg(256, 144, seed=i, quality=85) for i in range(8)]
    fast = [frames_image(frames, aug, random.Random(3), (64, 64)) for aug in (False, True)]
    fast.append(frames_image(frames[:5], False, None, (768, 768)))
    monkeypatch.setattr(dataset, "decode_jpeg", decode_jpeg_pil)
    slow = [frames_image(frames, aug, random.Random(3), (64, 64)) for aug in (False, True)]
    slow.append(frames_image(frames[:5], False, None, (768, 768)))
    for a, b in zip(fast, slow, strict=True):
        assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_what_simplejpeg_refuses_is_left_to_pil():
    # simplejpeg converts CMYK and RGB-coded JPEGs to RGB its own way: PIL's way is kept.
    for other in (jpeg(64, 36, mode="CMYK"), jpeg(64, 36, keep_rgb=True)):
        assert np.array_equal(np.asarray(decode_jpeg(other, (16, 16))),
                              np.asarray(decode_jpeg_pil(other, (16, 16))))
    # A damaged frame fails as it always did (PIL's error), never as a plausible image.
    for bad in (b"not a jpeg", jpeg(64, 36)[:40]):
        with pytest.raises(OSError):
            decode_jpeg_pil(bad, (16, 16)).load()
        with pytest.raises(OSError):
            decode_jpeg(bad, (16, 16)).load()


def test_two_streams_read_each_row_group_once_an_epoch(tmp_path, monkeypatch):
    """A batch takes rows from one row group per stream: however the streams interleave,
    each group is read from disk once an epoch (holding one group read both again at every
    batch, which at MELD's 1,000-row shards made the reader slower than the step)."""
    from meldflow.training.batches import MicroBatches, epoch_steps
    from meldflow.training.dataset import Source, plan_epoch

    n = 64
    strings = {c: pa.array([c[:3]] * n, pa.string()) for c in
               ("split", "speaker", "emotion", "sentiment", "status", "transcript")}
    table = pa.table(strings | {
        "emotion": pa.array(["joy", "anger"] * (n // 2)),
        "sentiment": pa.array(["positive", "negative"] * (n // 2)),
        "dialogue_id": pa.array(range(n), pa.int32()),
        "utterance_id": pa.array([0] * n, pa.int32()),
        "utterance": pa.array([f"line {i}" for i in range(n)]),
        "frames": pa.array([[jpeg(16, 16, seed=i)] for i in range(n)], pa.list_(pa.binary())),
        "flags": pa.array([[]] * n, pa.list_(pa.string())),
        "wer": pa.array([None] * n, pa.float64())})
    pq.write_table(table, tmp_path / "shard.parquet", row_group_size=16)
    source = Source([tmp_path / "shard.parquet"], None, "text+vision")
    assert len(source.units) == 4
    reads = collections.Counter()
    real = pq.ParquetFile.read_row_group

    def counted(self, i, columns=None, **kw):
        if columns and "frames" in columns:
            reads[i] += 1
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    plan = plan_epoch(source.units, 2, 4, seed=0, epoch=0)
    steps = epoch_steps(plan, 0, len(plan[0]) // 4, 4, 0, 1, 1, 0, 0, lambda u, r: 1.0)
    jobs = [job for s in steps for job in s.micro]

    class Rows:  # no model here: what the rows become is the encoder's concern
        cfg = types.SimpleNamespace(augment=False)

        def inputs(self, rows, rng):
            return {}

    data = MicroBatches(Rows(), source, jobs)
    seen = [w for i in range(len(data)) for w in data[i]["weight"]]
    assert sum(seen) == n  # every row once, with weight 1
    assert dict(reads) == {0: 1, 1: 1, 2: 1, 3: 1}, reads


def test_shards_holding_an_utterance_twice_are_refused(tmp_path):
    """Issue 34: two layouts' shards read together gave 108 rows for 66 utterances and
    trained on them without a word."""
    from meldflow import MeldflowError
    from meldflow.training.dataset import Source

    def shard(name, dialogues):
        n = len(dialogues)
        table = pa.table({"dialogue_id": pa.array(dialogues, pa.int32()),
                          "utterance_id": pa.array([0] * n, pa.int32()),
                          "speaker": ["A"] * n, "utterance": ["hi"] * n,
                          "flags": pa.array([[]] * n, pa.list_(pa.string())),
                          "wer": pa.array([None] * n, pa.float64())})
        pq.write_table(table, tmp_path / name)
        return tmp_path / name

    old, new = shard("old.parquet", [0, 1, 2]), shard("new.parquet", [2, 3])
    assert len(Source([old], None, "text").units) == 1
    with pytest.raises(MeldflowError, match=r"hold 1 row\(s\) twice \(\(dialogue, utterance\) "
                                            r"\(2, 0\)\).*shards.json"):
        Source([old, new], None, "text")
