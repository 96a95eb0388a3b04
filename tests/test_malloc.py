"""glibc malloc settings of the transcribe job."""


def test_malloc_arenas_are_capped_unless_the_user_set_them(monkeypatch):
    """The transcribe job's peak memory stays flat in the shard's length only with glibc's
    arenas capped (bench_transcribe_memory.py); a user's MALLOC_ARENA_MAX is left alone."""
    import platform

    from meldflow.malloc import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
