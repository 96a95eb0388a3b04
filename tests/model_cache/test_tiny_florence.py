"""The tiny random Florence-2 built offline: a real tokenizer and the PIL image processor."""

import numpy as np
from PIL import Image

from meldflow.model_cache.data_only import load_florence_dir
from meldflow.model_cache.snapshots import cached_snapshot
from meldflow.settings import TINY_FLORENCE


def test_the_tokenizer_holds_its_trained_vocabulary_and_round_trips(florence_home):
    """transformers 5 builds a BART tokenizer given file names with its special tokens
    only: the tiny one must hold the vocabulary it was trained with."""
    _, processor = load_florence_dir(cached_snapshot(florence_home, TINY_FLORENCE, "main"))
    tok = processor.tokenizer
    assert len(tok.get_vocab()) > 500
    text = "Joey: How you doin'? neutral"
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids and len(ids) < 0.75 * len(text)  # merges used
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id


def test_the_image_processor_resizes_and_normalises_as_pil_does(florence_home):
    _, processor = load_florence_dir(cached_snapshot(florence_home, TINY_FLORENCE, "main"))
    size = processor.image_processor.size["height"]
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    pixels = processor(images=image, text="x", return_tensors="pt")["pixel_values"][0].numpy()
    expected = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    expected = (expected - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert pixels.shape == (3, size, size)
    assert np.abs(pixels - expected.transpose(2, 0, 1)).max() < 1e-5
