"""The offline stand-in for Florence-2: the native classes, a few layers wide, random.

Built by ``meldflow stage`` when ``florence_repo`` is its repo id, so that the workflow and
the tests run the real transformers Florence-2 code with no download.
"""

from __future__ import annotations

import json
from pathlib import Path

from meldflow import MeldflowError
from meldflow.annotations import read_annotations
from meldflow.labels import EMOTIONS, SENTIMENTS

TINY_IMAGE_SIZE = 64  # the vision tower's total stride is 32: 2x2 patches + 1 token


def build_tiny_florence(out: str | Path, texts: list[str], seed: int = 0,
                        image_size: int = TINY_IMAGE_SIZE, vocab_size: int = 1000) -> Path:
    """A tiny, randomly initialised native Florence-2 with a BPE tokenizer trained on ``texts``.

    Built from ``Florence2Config`` (a DaViT vision tower and a BART encoder-decoder, both a
    few layers wide), saved with ``save_pretrained`` like any checkpoint.
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        BartTokenizerFast,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = list(texts) + [" ".join(EMOTIONS + SENTIMENTS)] * 4
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                            show_progress=False)
    trained = json.loads(bpe.to_str())["model"]
    # The tokenizer takes its vocabulary and merges as values: given file names
    # (vocab_file=) it keeps only its special tokens, silently; so its size is checked.
    tok = BartTokenizerFast(vocab=trained["vocab"], merges=[tuple(m) for m in trained["merges"]],
                            extra_special_tokens={"image_token": "<image>"})
    if len(tok.get_vocab()) < len(trained["vocab"]):
        raise MeldflowError(f"the tiny tokenizer came out with {len(tok.get_vocab())} tokens "
                            f"of the {len(trained['vocab'])} trained: transformers changed "
                            f"how a BART tokenizer is built")
    # The PIL backend, named: the default wants torchvision, which meldflow does not install.
    images = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        image_seq_length=(image_size // 32) ** 2 + 1,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    processor = Florence2Processor(image_processor=images, tokenizer=tok)
    config = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[16, 32, 48, 64],
                           num_heads=[1, 2, 3, 4], num_groups=[1, 2, 3, 4], window_size=2,
                           projection_dim=64, drop_path_rate=0.0),
        text_config=dict(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                         forced_eos_token_id=tok.eos_token_id,
                         # No dropout: runs on 1 and N processes must agree exactly.
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0),
        image_token_id=tok.image_token_id,
    )
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def sample_texts(meld_dir: str | Path) -> list[str]:
    """Every utterance of the annotation CSVs in ``meld_dir`` (tokenizer training text)."""
    texts = []
    for csv_path in sorted(Path(meld_dir).glob("*_sent_emo*.csv")):
        texts += [f"{a.speaker}: {a.utterance}" for a in read_annotations(csv_path)]
    if not texts:
        raise MeldflowError(f"no annotation CSVs in {meld_dir} to train the tiny tokenizer on")
    return texts
