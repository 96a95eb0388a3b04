"""Florence-2 fine-tuning for emotion and sentiment, one module per responsibility.

- ``options``: every training option, defined once (flags, config, options file)
- ``identity``: the verified model snapshot and a run's identity (no torch)
- ``model``: the classifier (Florence-2's encoder under two heads), loading and saving
- ``batches``: rows into model inputs, micro-batches per rank, loader workers
- ``distributed``: process group set-up (gloo on the CPU, NCCL on GPUs)
- ``loop``: one rank's run, read top to bottom: ``train()`` and its ``Recipe``
- ``progress``: the log's steps/s and time left, TensorBoard event files
- ``evaluation``: the trained model on dev and test: metrics, predictions, plots
- ``launch``: submitit jobs (local processes or SLURM), requeue and reattach
- ``predict``: emotion and sentiment of new clips or utterances

Nothing here imports torch at package level, so ``meldflow --help`` stays fast.
"""
