"""The bundled sample (meldflow.sample_data): `meldflow make-sample`, as the README says,
regenerates it byte for byte, deliberate faults included."""
import filecmp
import subprocess

import pytest
from helpers import BIN, SAMPLE, env_with_venv, need_tool


@pytest.mark.integration  # espeak-ng and ffmpeg make 104 clips: about 20 s
def test_make_sample_regenerates_the_bundled_sample_byte_for_byte(tmp_path):
    need_tool("espeak-ng")
    need_tool("ffmpeg")
    out = tmp_path / "sample"
    subprocess.run([str(BIN / "meldflow"), "make-sample", "--out", str(out)], check=True,
                   capture_output=True, env=env_with_venv())
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file())
    assert made == bundled and len(made) > 100
    _, differ, errors = filecmp.cmpfiles(out, SAMPLE, [str(p) for p in made], shallow=False)
    assert differ == [] and errors == []
