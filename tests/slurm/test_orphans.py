"""Jobs of an earlier, killed run (meldflow.slurm.orphans): looked for only where a run
went to SLURM."""





def test_only_a_folder_once_run_on_slurm_is_checked_for_orphaned_jobs(tmp_path, monkeypatch):
    """Every run starts by looking for SLURM jobs a killed earlier run left behind. A
    folder never run on SLURM has none, and asking cost a local run 10 to 60 s wherever
    squeue is installed but no controller answers (a laptop with the local cluster down)."""
    from meldflow.slurm.orphans import cancel_orphaned_jobs

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    work = tmp_path / "work"
    logs = work / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (logs / "2026-11-30T010000.000000.snakemake.log").write_text("Building DAG of jobs...\n")
    assert cancel_orphaned_jobs(work) == [] and not calls.exists()
    (logs / "2026-11-30T020000.000000.snakemake.log").write_text("SLURM run ID: 1a2b\n")
    assert cancel_orphaned_jobs(work) == [] and calls.read_text().count("--me") == 1
