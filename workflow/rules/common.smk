import json
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

SPLITS = config["splits"]
HF_HOME = config["hf_home"]
SHARD = "{shard,[0-9]{4}}"


def annotation_csv(wildcards):
    """The split's annotation CSV, so that editing it reruns ingest."""
    for name in (f"{wildcards.split}_sent_emo.csv", f"{wildcards.split}_sent_emo_dya.csv"):
        path = Path(config["meld_dir"]) / name
        if path.is_file():
            return str(path)
    raise ValueError(f"no annotation CSV for split {wildcards.split} in {config['meld_dir']}")


def shards_of(split):
    """Shard ids of a split, known once its ingest checkpoint has run."""
    info = checkpoints.ingest.get(split=split).output.shards
    n = json.loads(Path(info).read_text())["num_shards"]
    return [f"{i:04d}" for i in range(n)]


def aligned_of(split):
    return expand("results/aligned/{split}/shard-{shard}.parquet", split=split,
                  shard=shards_of(split))


def aligned_shards(wildcards):
    return aligned_of(wildcards.split)


def all_aligned(wildcards):
    return [path for split in SPLITS for path in aligned_of(split)]


onsuccess:
    summary = Path("results/manifest/summary.txt")
    if summary.is_file():
        print("\nmeldflow: rows per status (details in results/manifest/{split}.parquet)")
        print(summary.read_text(), end="")
