"""Whether a clip's audio holds speech at all, decided before Whisper hears it.

Whisper hears silence as "you" or "thank you" and noise as ". . . .", alone or in a shared
window, with no sign that it guessed (a 3 s silent clip between two spoken ones came back
"You", status ok). So each clip's audio is first given to Silero's voice activity
detector (the ONNX model faster-whisper ships): a clip whose highest speech probability
stays below ``SPEECH_THRESHOLD`` has no speech, gets an empty transcript and the flag
``no_speech``, and is not transcribed. The decision depends on the clip's audio alone,
so it is the same in a shard, alone and in ``meldflow predict``.

Silero's probabilities fall with the level (a "Oh!" at -26 dB scores 0.44), so the audio
is scaled to one peak level first. Measured on espeak-ng lines and generated sounds:
"Oh!", "Yeah.", "Hm.", "Phoebe!" at any level 0.89-0.99, in noise 0.68; digital silence
0.02, room tone, white and loud noise 0.11-0.13, a hum 0.03.
"""

from __future__ import annotations

import numpy as np

SPEECH_THRESHOLD = 0.5  # Silero's own default
PEAK_LEVEL = 0.5  # the clip's loudest sample is scaled to this before detection
WINDOW = 512  # samples per Silero decision at 16 kHz (32 ms)


def speech_probability(samples: np.ndarray) -> float:
    """The highest probability of speech over a clip's 16 kHz audio (0.0 for none)."""
    from faster_whisper.vad import get_vad_model

    if samples.size == 0:
        return 0.0
    peak = float(np.abs(samples).max())
    audio = samples * np.float32(PEAK_LEVEL / peak) if peak > 0 else samples
    audio = np.pad(audio.astype(np.float32, copy=False), (0, -audio.size % WINDOW))
    return float(np.max(get_vad_model()(audio)))


def no_speech_reason(probability: float) -> str:
    """The reason a clip without speech gets no transcript."""
    return (f"no speech in the audio (voice activity at most {probability:.2f}, below "
            f"{SPEECH_THRESHOLD}): not transcribed")
