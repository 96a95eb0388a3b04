"""The classifier's trainable weights: the text encoder and the vision tower train, the BART
decoder and LM head (unused) do not."""

from meldflow.model_cache.snapshots import cached_snapshot
from meldflow.settings import TINY_FLORENCE
from meldflow.training.classifier import EmotionClassifier, load_florence


def test_the_text_encoder_trains_and_the_decoder_is_frozen(florence_home):
    """transformers 5's get_decoder() returns Florence-2's whole encoder-decoder: freezing
    through it froze the text encoder as well (83,584 of the tiny model's 380,346 trainable
    weights), silently."""
    florence, _ = load_florence(cached_snapshot(florence_home, TINY_FLORENCE, "main"))
    model = EmotionClassifier(florence)
    lm = florence.model.language_model
    assert all(p.requires_grad for p in lm.encoder.parameters())
    assert all(p.requires_grad for p in florence.model.vision_tower.parameters())
    frozen = {id(p) for p in lm.decoder.parameters()} - {id(lm.shared.weight)}
    assert not any(p.requires_grad for p in lm.decoder.parameters() if id(p) in frozen)
    assert florence.get_input_embeddings().weight.requires_grad  # shared, kept trainable
    assert all(p.requires_grad for p in (*model.emotion.parameters(),
                                         *model.sentiment.parameters()))


def test_freezing_the_vision_tower_leaves_the_text_encoder_training(florence_home):
    florence, _ = load_florence(cached_snapshot(florence_home, TINY_FLORENCE, "main"))
    model = EmotionClassifier(florence)
    model.freeze_unused("text+vision", freeze_vision=True)
    assert not any(p.requires_grad for p in florence.model.vision_tower.parameters())
    assert all(p.requires_grad for p in florence.model.language_model.encoder.parameters())
