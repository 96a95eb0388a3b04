"""Preprocessing, one module per workflow step: ingest, transcribe (audio, shared_window,
wer), frames, align, manifest, summary and audit; probe decides every clip fault once, and
layout knows MELD.Raw's folders. Row statuses are ``meldflow.row_status``; the shards'
columns ``meldflow.shard_schema``."""
