localrules:
    stage_whisper,
    preprocess,


rule stage_whisper:
    # Local: on a cluster it runs on the login node, the one that may reach the Hub.
    output:
        "results/stage/whisper.json",
    params:
        hf_home=HF_HOME,
        model=config["whisper_model"],
    log:
        "results/logs/stage_whisper.log",
    benchmark:
        "results/benchmarks/stage_whisper.tsv"
    conda:
        "../../envs/transcription.yaml"
    shell:
        "meldflow stage --hf-home {params.hf_home:q} --models whisper "
        "--whisper-model {params.model:q} "
        "--lock-out {output:q} > {log:q} 2>&1"


checkpoint ingest:
    input:
        annotation_csv,
    output:
        table="results/ingest/{split}.parquet",
        shards="results/ingest/{split}.shards.json",
        unused="results/ingest/{split}.unused.tsv",
    params:
        meld_dir=config["meld_dir"],
        shard_size=config["shard_size"],
        clips=clip_fingerprint,
    log:
        "results/logs/ingest/{split}.log",
    benchmark:
        "results/benchmarks/ingest/{split}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow ingest --meld-dir {params.meld_dir:q} --split {wildcards.split} "
        "--shard-size {params.shard_size:q} --out {output.table:q} "
        "--unused {output.unused:q} --info {output.shards:q} > {log:q} 2>&1"


rule transcribe:
    input:
        rows=ancient("results/ingest/{split}.parquet"),
        model="results/stage/whisper.json",
    output:
        f"results/transcripts/{{split}}/shard-{SHARD}.parquet",
    params:
        rows=shard_digest,
        hf_home=HF_HOME,
        model=config["whisper_model"],
        device=config.get("whisper_device", "auto"),
        beam=config.get("whisper_beam_size", 5),
        cap=config.get("max_clip_seconds", 30),
        pack=config.get("whisper_pack_seconds", 28),
    threads: 2
    log:
        "results/logs/transcribe/{split}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/transcribe/{split}/shard-{shard}.tsv"
    conda:
        "../../envs/transcription.yaml"
    shell:
        "meldflow transcribe --rows {input.rows:q} --shard {wildcards.shard} "
        "--out {output:q} "
        "--model {params.model:q} --hf-home {params.hf_home:q} --device {params.device:q} "
        "--beam-size {params.beam:q} --max-clip-seconds {params.cap:q} --threads {threads} "
        "--pack-seconds {params.pack:q} > {log:q} 2>&1"


rule frames:
    input:
        rows=ancient("results/ingest/{split}.parquet"),
    output:
        f"results/frames/{{split}}/shard-{SHARD}.parquet",
    params:
        rows=shard_digest,
        k=config["frames_per_utterance"],
        size=config["frame_size"],
        cap=config.get("max_clip_seconds", 30),
    threads: 2
    log:
        "results/logs/frames/{split}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/frames/{split}/shard-{shard}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow frames --rows {input.rows:q} --shard {wildcards.shard} --out {output:q} "
        "--frames {params.k:q} --size {params.size:q} --max-clip-seconds {params.cap:q} "
        "--workers {threads} > {log:q} 2>&1"


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
        "results/manifest/{split}.parquet",
    log:
        "results/logs/manifest/{split}.log",
    benchmark:
        "results/benchmarks/manifest/{split}.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow manifest --ingest {input.ingest:q} --aligned {input.aligned:q} "
        "--out {output:q} > {log:q} 2>&1"


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
        max_wer=config.get("audit_max_wer", 0.75),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        "../../envs/frames.yaml"
    shell:
        "meldflow summary --manifests {input.manifests:q} --unused {input.unused:q} "
        "--ingest-info {input.info:q} --out {output.tsv:q} --txt {output.txt:q} "
        "--plot {output.plot:q} --audit {output.audit:q} --audit-max-wer {params.max_wer:q} "
        "> {log:q} 2>&1"


rule preprocess:
    input:
        all_aligned,
        rules.summary.output,
