"""A site's QOS and association limits against what a run asks
(meldflow.slurm.site_limits); on the local cluster in tests/slurm/test_preflight.py."""
import pytest

from meldflow.slurm.preflight import Ask
from meldflow.slurm.site_limits import SiteLimits, SubmitPlan, limit_problems, minutes_of

SITE = SiteLimits(
    assoc={"lab": {"qos": {"site", "long"}, "default_qos": "site", "submit": "",
                   "wall": "", "tres": ""},
           "small": {"qos": {"site"}, "default_qos": "site", "submit": "10", "wall": "",
                     "tres": "gres/gpu=1"}},
    qos={"site": {"submit": "20", "wall": "12:00:00", "tres_user": "gres/gpu=4",
                  "tres_job": ""},
         "long": {"submit": "", "wall": "3-00:00:00", "tres_user": "", "tres_job": ""}},
    default_account="lab")

SHARD = Ask("shard jobs", "profile default-resources", minutes=30)
TRAIN = Ask("training default/seed-0", "train.slurm", minutes=60, gpus_per_node=2,
            elsewhere=(("minutes", "train.time_min"),))


def test_time_limits_in_every_slurm_form():
    assert minutes_of("4:00:00") == 240 and minutes_of("1-00:00:00") == 1440
    assert minutes_of("30") == 30 and minutes_of("1-12") == 2160
    assert minutes_of("infinite") is None and minutes_of("UNLIMITED") is None


def test_the_limits_of_an_ask_are_its_accounts_and_its_qos():
    lim = SITE.for_ask(SHARD)  # the default account, its default QOS
    assert lim.qos == "site" and lim.max_submit.value == 20 and lim.max_wall_min.value == 720
    assert lim.max_gpus_user.value == 4 and lim.max_gpus_job is None
    small = SITE.for_ask(Ask("x", "y", account="small"))
    assert (small.max_submit.value, small.max_submit.source) == (
        10, "association small's MaxSubmitJobs")  # the smaller of the two
    assert small.max_gpus_job.value == 1
    assert SITE.for_ask(Ask("x", "y", qos="long")).max_wall_min.value == 3 * 1440
    assert SiteLimits().for_ask(SHARD).max_submit is None  # no accounting: no limits


def test_a_run_over_the_submit_limit_is_told_how_many_jobs_fit():
    """Snakemake counts its own jobs against `jobs:`, not the training jobs submitit adds."""
    plan = SubmitPlan(100, "cluster/slurm/config.yaml jobs", 3, "training runs, at most "
                      "local-cores 32 at once")
    found, notes = limit_problems([SHARD, TRAIN], SITE, plan)
    assert found == [
        "this run may have 100 (cluster/slurm/config.yaml jobs) and 3 (training runs, at "
        "most local-cores 32 at once) jobs submitted at once: 103 is over QOS site's "
        "MaxSubmitJobsPU of 20, and SLURM refuses the rest (Snakemake takes that for a "
        "failed job): set jobs: 17 or fewer in the profile"]
    assert limit_problems([SHARD, TRAIN], SITE, SubmitPlan(17, "p", 3, "t"))[0] == []
    # the README's sweep, 25 runs at once with nothing left to preprocess: training alone
    found, _ = limit_problems([TRAIN], SITE, SubmitPlan(16, "jobs", 25, "local-cores"))
    assert found[0].endswith("set local-cores: 10 (training runs submitted at once) and "
                             "jobs: 10 or fewer in the profile"), found


@pytest.mark.parametrize("ask, message", [
    (Ask("rule frames", "profile set-resources: frames", minutes=900),
     "rule frames: a time limit of 900 min (profile set-resources: frames) is over QOS "
     "site's MaxWall of 720 min: the job would wait forever (QOSMaxWallDurationPerJobLimit)"),
    (Ask("training a/seed-0", "train.slurm", gpus_per_node=4, nodes=2),
     "training a/seed-0: 8 GPUs (2 node(s) x 4, train.slurm) is more than QOS site's "
     "MaxTRESPU gres/gpu of 4: the job would wait forever"),
    (Ask("training a/seed-0", "train.slurm", account="small", gpus_per_node=2),
     "training a/seed-0: 2 GPUs (1 node(s) x 2, train.slurm) is more than association "
     "small's MaxTRES gres/gpu of 1: the job would wait forever"),
])
def test_an_ask_over_a_wall_or_gpu_limit_would_wait_forever(ask, message):
    assert limit_problems([ask], SITE, None) == ([message], [])


def test_trainings_over_the_gpu_limit_together_are_a_note():
    found, notes = limit_problems([SHARD, TRAIN], SITE, SubmitPlan(10, "p", 3, "t"))
    assert found == [] and notes == [
        "3 training runs of 2 GPU(s) each are over QOS site's MaxTRESPU gres/gpu of 4: they "
        "run 2 at a time"]
