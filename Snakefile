# meldflow: MELD clips -> Whisper transcripts + frames -> aligned Parquet shards.
# Rules live in workflow/rules/; configuration in config/config.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"


rule all:
    # Without the train split there is nothing to train on: preprocessing only.
    default_target: True
    input:
        rules.preprocess.input,
        rules.evaluate.output if TRAIN else [],
