"""Row statuses shared by every step, and how they combine into one per row."""

from __future__ import annotations

# Most severe first: the manifest reports the first status any step gave a row.
STATUSES: dict[str, str] = {
    "missing_video": "no clip file for this annotation row (or a dangling link)",
    "empty_video": "the clip file is empty (0 bytes)",
    "unreadable_video": "the clip cannot be read or decoded (not a regular file, no "
                        "permission, truncated, corrupt)",
    "no_video_stream": "the clip holds audio but no video stream",
    "no_audio": "the clip has no audio stream; text and frames are kept",
    "ok": "transcribed and framed",
}

# Flags mark a row to check before trusting it (each is listed by the audit, and can be
# left out of training with exclude_flags): damage, a clip that does not match its
# annotation, or a row that cannot be checked. Benign properties are not flags (an AAC
# track a fraction of a second shorter than its video: meldflow.preprocess.probe.audio_short).
FLAGS: dict[str, str] = {
    "bad_timestamps": "EndTime is not after StartTime in the annotation",
    "clip_capped": "the clip is longer than max_clip_seconds; only its start was used",
    "empty_transcript": "Whisper heard no words (none, or only punctuation) in a clip with "
                        "speech",
    "no_speech": "no speech in the clip's audio (voice activity detection): silence or "
                 "noise, given an empty transcript without Whisper hearing it",
    "no_gold_text": "the gold utterance is empty after normalisation; WER is undefined",
    "duplicate_clip_used": "the canonical clip was missing; its final_videos_test copy was used",
    "decode_errors": "parts of the clip failed to decode (damaged); the reason gives the count",
    "audio_short": "the decoded audio stops far before the CSV's EndTime - StartTime (or the "
                   "container's duration): damaged or cut audio",
    "duration_mismatch": "the clip's length is far from the CSV's EndTime - StartTime "
                         "(a mis-cut clip)",
    "multiple_audio_streams": "the clip has several audio streams: the one marked default "
                              "was transcribed (the reason says which), but whether it "
                              "holds the dialogue is a guess",
    "encoding_repaired": "the row's CSV line was not UTF-8 like the rest of its file (decoded "
                         "as Windows-1252), or holds a byte that stands for no character",
}

# Rows with these statuses have no usable clip: later steps do not try to decode them.
NO_CLIP = frozenset({"missing_video", "empty_video"})


def worst(statuses: list[str]) -> str:
    """The most severe of several statuses (``ok`` when the list is empty)."""
    order = list(STATUSES)
    known = [s for s in statuses if s]
    for s in known:
        if s not in STATUSES:
            raise ValueError(f"unknown status {s!r}")
    return min(known, key=order.index) if known else "ok"
