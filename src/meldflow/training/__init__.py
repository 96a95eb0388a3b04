"""Florence-2 fine-tuning for emotion and sentiment, one module per responsibility.

- ``train_options``: every training option, defined once (flags, config, options file)
- ``identity``: the verified model snapshot, a run's identity, how its inputs were made
- ``dataset``: the shards (or CSVs) as row groups; each epoch's plan over data streams
- ``batches``: rows into model inputs, micro-batches per rank, loader workers
- ``classifier``: the classifier (Florence-2's encoder under two heads), loading and saving
- ``distributed``: process group set-up (gloo on the CPU, NCCL on GPUs)
- ``loop``: one rank's run, read top to bottom: ``train()`` and its ``Recipe``
- ``checkpoint``: checkpoints written with their SHA-256, verified before a resume
- ``progress``: the log's steps/s and time left, TensorBoard event files
- ``scoring``: a trained model on dev and test: probabilities, metrics, predictions
- ``launch``: submitit jobs (local processes or SLURM), requeue and reattach
- ``predict``: emotion and sentiment of new clips or utterances, prepared as in training
- ``evaluate``: the `evaluate` rule: every run compared, mean ± sd over seeds, plots

Nothing here imports torch at package level, so ``meldflow --help`` stays fast.
"""
