localrules:
    stage_whisper,
    preprocess,


rule stage_whisper:
    # Local: on a cluster it runs on the login node, the one that may reach the Hub.
    output:
        "results/stage/whisper.json",
    params:
        settings=flags(config, ["hf_home", "whisper_model"]),
    log:
        "results/logs/stage_whisper.log",
    benchmark:
        "results/benchmarks/stage_whisper.tsv"
    conda:
        "../../envs/transcription.yaml"
    shell:
        "meldflow stage --models whisper {params.settings} --lock-out {output:q} "
        "> {log:q} 2>&1"


checkpoint ingest:
    input:
        annotation_csv,
    output:
        table="results/ingest/{split}.parquet",
        shards="results/ingest/{split}.shards.json",
        unused="results/ingest/{split}.unused.tsv",
    params:
        settings=step_flags(config, "ingest"),
        clips=clip_fingerprint,
        # the steps' shard folders: shards the new plan does not make are moved to stale
        shard_dirs=lambda w: [f"results/{step}/{w.split}" for step in SHARD_DIRS],
        stale="results/stale",
    log:
        "results/logs/ingest/{split}.log",
    benchmark:
        "results/benchmarks/ingest/{split}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow ingest --split {wildcards.split} --out {output.table:q} "
        "--unused {output.unused:q} --info {output.shards:q} {params.settings} "
        "--stale-from {params.shard_dirs:q} --stale-to {params.stale:q} > {log:q} 2>&1"


rule transcribe:
    input:
        rows=ancient("results/ingest/{split}.parquet"),
        model="results/stage/whisper.json",
    output:
        f"results/transcripts/{{split}}/shard-{SHARD}.parquet",
    params:
        rows=shard_digest,
        settings=step_flags(config, "transcribe"),
        method=METHOD_VERSIONS["transcribe"],
    threads: 2
    log:
        "results/logs/transcribe/{split}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/transcribe/{split}/shard-{shard}.tsv"
    conda:
        "../../envs/transcription.yaml"
    shell:
        "meldflow transcribe --rows {input.rows:q} --shard {wildcards.shard} "
        "--out {output:q} --threads {threads} {params.settings} > {log:q} 2>&1"


rule frames:
    input:
        rows=ancient("results/ingest/{split}.parquet"),
    output:
        f"results/frames/{{split}}/shard-{SHARD}.parquet",
    params:
        rows=shard_digest,
        settings=step_flags(config, "frames"),
        method=METHOD_VERSIONS["frames"],
    threads: 2
    log:
        "results/logs/frames/{split}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/frames/{split}/shard-{shard}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow frames --rows {input.rows:q} --shard {wildcards.shard} --out {output:q} "
        "--workers {threads} {params.settings} > {log:q} 2>&1"


rule align:
    input:
        rows=ancient("results/ingest/{split}.parquet"),
        transcripts="results/transcripts/{split}/shard-{shard}.parquet",
        frames="results/frames/{split}/shard-{shard}.parquet",
    output:
        f"results/aligned/{{split}}/shard-{SHARD}.parquet",
    params:
        rows=shard_digest,
    log:
        "results/logs/align/{split}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/align/{split}/shard-{shard}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow align --rows {input.rows:q} --shard {wildcards.shard} "
        "--transcripts {input.transcripts:q} --frames {input.frames:q} --out {output:q} "
        "> {log:q} 2>&1"


rule manifest:
    input:
        ingest="results/ingest/{split}.parquet",
        aligned=aligned_shards,
    output:
        table="results/manifest/{split}.parquet",
        # the list of the split's aligned shards, which readers of the folder go by
        index=f"results/aligned/{{split}}/{SHARD_INDEX}",
    params:
        # the aligned shards (the same as input.aligned), or --without-clips
        source=manifest_source,
    log:
        "results/logs/manifest/{split}.log",
    benchmark:
        "results/benchmarks/manifest/{split}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow manifest --ingest {input.ingest:q} {params.source} "
        "--out {output.table:q} --index {output.index:q} > {log:q} 2>&1"


rule summary:
    input:
        manifests=expand("results/manifest/{split}.parquet", split=SPLITS),
        unused=expand("results/ingest/{split}.unused.tsv", split=SPLITS),
        info=expand("results/ingest/{split}.shards.json", split=SPLITS),
    output:
        tsv="results/manifest/summary.tsv",
        txt="results/manifest/summary.txt",
        plot=report("results/manifest/summary.png", caption="../report/status.rst",
                    category="Preprocessing"),
        audit=report("results/manifest/audit.tsv", caption="../report/audit.rst",
                     category="Preprocessing"),
    params:
        settings=step_flags(config, "summary"),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow summary --manifests {input.manifests:q} --unused {input.unused:q} "
        "--ingest-info {input.info:q} --out {output.tsv:q} --txt {output.txt:q} "
        "--plot {output.plot:q} --audit {output.audit:q} {params.settings} > {log:q} 2>&1"


rule preprocess:
    input:
        all_aligned,
        expand(f"results/aligned/{{split}}/{SHARD_INDEX}", split=SPLITS),
        rules.summary.output,
