"""What SLURM's accounting says, in numbers (meldflow.slurm.accounting)."""
from meldflow.slurm.accounting import to_mb, to_seconds


def test_units_of_sacct_fields():
    assert to_mb("2000M") == 2000 and to_mb("2G") == 2048 and to_mb("512K") == 0.5
    assert to_mb("") is None
    assert to_seconds("00:01:30") == 90 and to_seconds("1-00:00:01") == 86401
    assert to_seconds("00:02.500") == 2.5
