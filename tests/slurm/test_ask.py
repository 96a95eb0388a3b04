"""What one kind of job asks of the cluster (meldflow.slurm.ask)."""
from meldflow.slurm.ask import Ask


def test_each_value_names_where_it_is_set():
    ask = Ask("rule frames", "profile set-resources: frames", minutes=500,
              elsewhere=(("minutes", "profile default-resources"),))
    assert ask.where_of("minutes") == "profile default-resources"
    assert ask.where_of("mem_mb") == "profile set-resources: frames"
    assert Ask("x", "y") == Ask("x", "y") and len({Ask("x", "y"), Ask("x", "y")}) == 1
