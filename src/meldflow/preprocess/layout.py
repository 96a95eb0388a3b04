"""Before any job: does ``meld_dir`` hold what the run needs (the annotation CSVs, and each
split's clips where a run reads them)? Used when the workflow starts and by ``meldflow
check``."""

from __future__ import annotations

from pathlib import Path

from meldflow import MeldflowError
from meldflow.annotations import CLIP_DIRS, DUPLICATE_PREFIX, clip_dir, find_csv, read_annotations

# A split with fewer of its rows' clips on disk than this share is a wrong folder or an
# unfinished download, not damage (MELD itself misses 1 clip of 1,109 in dev).
MIN_CLIPS_FOUND = 0.1


def check_clip_folder(meld_dir: str | Path, split: str, clips_needed: bool = True
                      ) -> str | None:
    """Checked when the workflow starts, before any job: a split whose clip folder is
    missing, or holds almost none of the clips its CSV names, is an error naming the folder
    and the fix (else every shard job would run on nothing, and every row end
    ``missing_video``). With ``clips_needed`` False (training reads only the gold lines)
    it is the warning returned. A missing CSV names the files looked for."""
    csv_path = find_csv(meld_dir, split)
    folder = clip_dir(meld_dir, split)
    fix = (f"MELD.Raw keeps the {split} clips in {CLIP_DIRS[split]}/ beside {csv_path.name}: "
           f"set meld_dir to the extracted MELD.Raw folder (config/config.yaml, or --config "
           f"meld_dir=...), or finish extracting the clips")
    if not folder.is_dir():
        problem = f"{split}: clip folder {folder} does not exist"
    else:
        names = {p.name for p in folder.iterdir()}
        rows = read_annotations(csv_path)
        found = sum(a.clip_name in names or DUPLICATE_PREFIX + a.clip_name in names
                    for a in rows)
        if not rows or found >= MIN_CLIPS_FOUND * len(rows):
            return None
        problem = (f"{split}: only {found} of the {len(rows)} clips that {csv_path} names "
                   f"are in {folder} (clips are named dia{{D}}_utt{{U}}.mp4)")
    if clips_needed:
        raise MeldflowError(f"{problem}. {fix}.")
    return f"{problem}; training reads only the gold lines, so the run goes on. {fix}."
