"""Preprocessing, one module per workflow step: ingest, transcribe (audio, wer), frames,
align, manifest, summary and audit; probe and status decide every clip fault once."""
