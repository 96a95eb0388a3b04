localrules:
    stage_florence,
    train_options,
    train,


rule stage_florence:
    # Local: on a cluster it runs on the login node, the one that may reach the Hub.
    output:
        "results/stage/florence.json",
    params:
        hf_home=HF_HOME,
        repo=config["florence_repo"],
        revision=config.get("florence_revision", "main"),
        tiny="--tiny" if config["florence_repo"] == TINY_FLORENCE else "",
        meld_dir=config["meld_dir"],
    log:
        "results/logs/stage_florence.log",
    benchmark:
        "results/benchmarks/stage_florence.tsv"
    conda:
        "../../envs/training.yaml"
    shell:
        "meldflow stage --hf-home {params.hf_home} --models florence {params.tiny} "
        "--florence-repo {params.repo} --florence-revision {params.revision} "
        "--meld-dir {params.meld_dir} --lock-out {output} > {log} 2>&1"


rule train_options:
    # Local: the options `meldflow train` gets, as one file (its content changes when the
    # config's train: block, the model or the shards do, and then train runs again).
    input:
        shards=all_aligned,
    output:
        "results/train/options.yaml",
    params:
        options=train_options,
    log:
        "results/logs/train_options.log",
    run:
        from meldflow.training.options import write_options_file

        write_options_file(params.options, output[0], log[0])


rule train:
    # Local: it only submits through submitit (SLURM or local processes) and waits. The
    # job id is kept in results/train/job.json, so a restarted workflow reattaches.
    input:
        options="results/train/options.yaml",
        shards=all_aligned,
        model="results/stage/florence.json",
    output:
        "results/train/metrics.json",
    log:
        "results/logs/train.log",
    benchmark:
        "results/benchmarks/train.tsv"
    conda:
        "../../envs/training.yaml"
    shell:
        "meldflow train --options {input.options} --out results/train > {log} 2>&1"


rule evaluate:
    input:
        "results/train/metrics.json",
    output:
        table=report("results/evaluate/metrics.tsv", caption="../report/metrics.rst",
                     category="Metrics"),
        per_class=report("results/evaluate/per_class.tsv", caption="../report/per_class.rst",
                         category="Metrics"),
        curves=report("results/evaluate/curves.png", caption="../report/curves.rst",
                      category="Plots"),
        # one confusion matrix per evaluated split that the config has
        **{
            f"confusion_{s}": report(f"results/evaluate/confusion_{s}.png",
                                     caption="../report/confusion.rst", category="Plots")
            for s in EVAL_SPLITS
        },
    log:
        "results/logs/evaluate.log",
    benchmark:
        "results/benchmarks/evaluate.tsv"
    conda:
        "../../envs/training.yaml"
    shell:
        "meldflow evaluate --run results/train --out results/evaluate > {log} 2>&1"
