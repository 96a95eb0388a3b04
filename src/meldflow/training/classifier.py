"""The classifier: Florence-2's encoder states, mean-pooled, under two linear heads.

Florence-2's encoder holds the image tokens and the prompt together; the heads classify
7 emotions and 3 sentiments from the masked mean of its states. Why not score label strings
with the decoder: in our trials the tiny random model's decoder learned only the label
prior (text-only loss flat at the prior after 15 epochs on the sample) while the heads fit
in a few epochs; a head also needs one encoder pass per clip instead of one decoder pass
per label, and its softmax is a probability for every class. The decoder and LM head are
unused, so they are frozen (DDP needs every trainable weight to get a gradient).

A saved model (``best/``) is the Florence-2 model and processor (save_pretrained),
``heads.safetensors``, ``labels.json``, ``meldflow_train.json`` (its options) and
``preprocessing.json`` (how its frames and text were made, for ``meldflow predict``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from meldflow import MeldflowError
from meldflow.labels import EMOTIONS, SENTIMENTS
from meldflow.model_cache.data_only import load_florence_dir
from meldflow.storage import honour_umask, sha256_file

HEADS_FILE = "heads.safetensors"
OPTIONS_FILE = "meldflow_train.json"  # the training options
PREPROCESSING_FILE = "preprocessing.json"  # how its inputs were made: what predict repeats


class EmotionClassifier(torch.nn.Module):
    """Florence-2 encoder states, mean-pooled over real tokens, into two classifiers."""

    def __init__(self, florence):
        super().__init__()
        self.florence = florence
        d = florence.config.text_config.d_model
        self.emotion = torch.nn.Linear(d, len(EMOTIONS))
        self.sentiment = torch.nn.Linear(d, len(SENTIMENTS))
        # The BART decoder by its path: transformers 5's get_decoder() returns the whole
        # encoder-decoder for Florence-2, and freezing that would freeze the encoder too.
        for module in (florence.model.language_model.decoder,
                       florence.get_output_embeddings()):
            for p in module.parameters():
                p.requires_grad_(False)
        # The input embeddings are shared with the frozen decoder; keep them trainable.
        florence.get_input_embeddings().weight.requires_grad_(True)

    def encode(self, input_ids, attention_mask, pixel_values=None):
        f = self.florence
        embeds = f.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            # The projected image tokens: transformers 5 returns them as the pooled output.
            feats = f.get_image_features(pixel_values.to(embeds.dtype)).pooler_output
            mask = (input_ids == f.config.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
        return f.get_encoder()(inputs_embeds=embeds,
                               attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids, attention_mask, pixel_values=None):
        h = self.encode(input_ids, attention_mask, pixel_values)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.emotion(pooled.float()), self.sentiment(pooled.float())

    def freeze_unused(self, modalities: str, freeze_vision: bool) -> None:
        """Unused weights must not be trainable under DDP; a frozen tower saves memory too."""
        frozen = []
        if freeze_vision or "vision" not in modalities:
            frozen.append(self.florence.model.vision_tower)
        if "vision" not in modalities:
            frozen.append(self.florence.model.multi_modal_projector)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def load_heads(self, path: Path) -> EmotionClassifier:
        from safetensors.torch import load_file

        state = load_file(str(path))
        self.emotion.load_state_dict({k[8:]: v for k, v in state.items()
                                      if k.startswith("emotion.")})
        self.sentiment.load_state_dict({k[10:]: v for k, v in state.items()
                                        if k.startswith("sentiment.")})
        return self

    def save(self, processor, out: Path, options: dict | None = None,
             preprocessing: dict | None = None) -> None:
        """Florence-2 + processor via save_pretrained, the heads beside them, the options
        and how the inputs were prepared (for predict); atomically, modes from the umask."""
        from safetensors.torch import save_file


        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        self.florence.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        state = {f"emotion.{k}": v.detach().cpu().contiguous()
                 for k, v in self.emotion.state_dict().items()}
        state |= {f"sentiment.{k}": v.detach().cpu().contiguous()
                  for k, v in self.sentiment.state_dict().items()}
        save_file(state, str(tmp / HEADS_FILE))
        (tmp / "labels.json").write_text(json.dumps({"emotion": EMOTIONS,
                                                     "sentiment": SENTIMENTS}))
        if options is not None:  # how to build inputs at prediction time
            (tmp / OPTIONS_FILE).write_text(json.dumps(options, indent=1))
        if preprocessing is not None:
            (tmp / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=1))
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(_file_hashes(tmp), indent=1))
        honour_umask(tmp)
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)


def load_florence(snap: Path):
    """Model and processor from a verified snapshot folder, as data only, never the
    network: the folder itself, not the repo id, is loaded (a folder never touches the
    network, even where huggingface_hub was imported before HF_HUB_OFFLINE was set)."""
    return load_florence_dir(snap)


# A trained model's files and their SHA-256, written with them: checked before every use.
CHECKSUMS_FILE = "checksums.json"


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != CHECKSUMS_FILE}


def verify_model_dir(path: str | Path) -> None:
    """A trained model folder (``best/``) is what training wrote, file for file, or a
    MeldflowError naming the file: bits flipped in a tensor load silently and predict
    something else."""
    path = Path(path)
    if not (path / HEADS_FILE).is_file():
        raise MeldflowError(f"{path} is not a trained meldflow model (no {HEADS_FILE})")
    try:
        expected = json.loads((path / CHECKSUMS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise MeldflowError(
            f"{path / CHECKSUMS_FILE} cannot be read ({exc}): without it the model cannot be "
            f"verified (saved before meldflow recorded its files' hashes, or copied in part); "
            f"copy the whole folder again, or retrain") from None
    got = _file_hashes(path)
    for name, digest in expected.items():
        if name not in got:
            raise MeldflowError(f"{path / name} is missing: copy the whole model folder again")
        if got[name] != digest:
            raise MeldflowError(f"{path / name} is damaged (its SHA-256 is not the one recorded "
                                f"when the model was saved): copy the folder again, or retrain")


def load_trained(path: str | Path, device="cpu"):
    """(classifier, processor) saved by training, verified first; offline, from a plain
    folder."""
    path = Path(path)
    verify_model_dir(path)
    florence, processor = load_florence_dir(path)
    model = EmotionClassifier(florence).load_heads(path / HEADS_FILE)
    return model.to(device).eval(), processor

