"""Models in the offline Hugging Face cache: its layout and verification (``snapshots``),
staging (``stage``), the tiny Florence-2, and loading Whisper on its device (``whisper``)."""
