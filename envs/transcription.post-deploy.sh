#!/usr/bin/env bash
# Snakemake runs this inside the new conda env, from the workflow's folder: the rules call
# the `meldflow` CLI, so install this checkout (its pinned dependencies are already there).
set -euo pipefail
pip install --no-deps -e .
