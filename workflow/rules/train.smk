localrules:
    stage_florence,
    train_options,
    train,
    # a few seconds of reading metrics and plotting: never worth a queued job
    evaluate,


rule stage_florence:
    # Local: on a cluster it runs on the login node, the one that may reach the Hub.
    output:
        "results/stage/florence.json",
    params:
        # the tiny model's tokenizer is trained on meld_dir's CSVs
        settings=flags(config, ["hf_home", "florence_repo", "florence_revision", "meld_dir"]),
    log:
        "results/logs/stage_florence.log",
    benchmark:
        "results/benchmarks/stage_florence.tsv"
    conda:
        "../../envs/training.yaml"
    shell:
        "meldflow stage --models florence {params.settings} --lock-out {output:q} "
        "> {log:q} 2>&1"


wildcard_constraints:
    experiment=EXPERIMENT_NAME,
    seed="[0-9]+",


rule train_options:
    # Local: the options `meldflow train` gets for one run, as one file (its content
    # changes when the config's train: block, the experiment, the model or the shards do,
    # and then that run trains again).
    input:
        shards=all_aligned,
        csvs=lambda w: list(clipless_csvs(w).values()),
    output:
        "results/train/{experiment}/seed-{seed}.yaml",
    params:
        # a digest: Snakemake prints a changed param whole (the options are several KB)
        options=lambda w: options_digest(train_options(w)),
    log:
        "results/logs/train_options/{experiment}/seed-{seed}.log",
    run:
        from meldflow.training.runs import write_options_file

        write_options_file(train_options(wildcards), output[0], log[0])


rule train:
    # Local: it only submits through submitit (SLURM or local processes) and waits; the
    # job id is kept in the run's job.json, so a restarted workflow reattaches. Locally a
    # run takes every core (runs go one after another); under the SLURM executor it is a
    # SLURM job and the rule takes none of them, so every (experiment, seed) is queued at
    # once.
    input:
        options="results/train/{experiment}/seed-{seed}.yaml",
        shards=all_aligned,
        model="results/stage/florence.json",
    output:
        "results/train/{experiment}/seed-{seed}/metrics.json",
    params:
        out=subpath(output[0], parent=True),
    threads: train_threads
    resources:
        train_executor=train_executor,
    log:
        "results/logs/train/{experiment}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/train/{experiment}/seed-{seed}.tsv"
    conda:
        "../../envs/training.yaml"
    shell:
        # Snakemake empties this log before each try; the run's own train.log keeps them all
        "meldflow train --options {input.options:q} --out {params.out:q} "
        "--executor {resources.train_executor} > {log:q} 2>&1"


rule evaluate:
    # Every run's metrics side by side: mean ± sd over seeds per experiment and split.
    input:
        expand("{run}/metrics.json", run=RUN_DIRS),
    output:
        table=report("results/evaluate/metrics.tsv", caption="../report/metrics.rst",
                     category="Metrics"),
        per_class=report("results/evaluate/per_class.tsv", caption="../report/per_class.rst",
                         category="Metrics"),
        runs=report("results/evaluate/runs.tsv", caption="../report/runs.rst",
                    category="Metrics"),
        summary="results/evaluate/summary.txt",
        curves=report("results/evaluate/curves.png", caption="../report/curves.rst",
                      category="Plots"),
        # per evaluated split that the config has: the comparison and the confusion matrices
        **{
            f"compare_{s}": report(f"results/evaluate/experiments_{s}.png",
                                   caption="../report/experiments.rst", category="Plots")
            for s in EVAL_SPLITS
        },
        **{
            f"confusion_{s}": report(f"results/evaluate/confusion_{s}.png",
                                     caption="../report/confusion.rst", category="Plots")
            for s in EVAL_SPLITS
        },
    params:
        runs=RUN_DIRS,
    log:
        "results/logs/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate.tsv"
    conda:
        "../../envs/training.yaml"
    shell:
        "meldflow evaluate --runs {params.runs:q} --out results/evaluate > {log:q} 2>&1"
