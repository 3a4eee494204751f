"""The shared encoder-token cache: encode once, reuse, rebuild on a changed fingerprint, never
leave a store that looks complete after a failed or killed encoding, augmented views."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from medvtc.common.token_cache import META_FILE, CachedTokenDataset, TokenCache, fingerprint_key, module_fingerprint


def _dataset(n: int = 10, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(6, 4, generator=g)} for _ in range(n)]


class Counting:
    """An "encoder" that scales its input (doubles by default) and counts the samples it saw."""

    def __init__(self, scale: float = 2.0) -> None:
        self.seen, self.scale = 0, scale

    def __call__(self, items):
        self.seen += len(items)
        return torch.stack([it["x"] for it in items]) * self.scale


def test_encodes_once_and_reuses(tmp_path):
    data, enc = _dataset(), Counting()
    cache = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, enc, data, batch_size=3, shard_size=4, progress=False)
    assert enc.seen == 10 and len(cache) == 10 and cache.meta["shards"] == 3
    for i in (0, 3, 4, 9):  # across shard borders; stored fp16, read back as float32
        got = cache.tokens(i)
        assert got.dtype == torch.float32 and got.shape == (6, 4)
        torch.testing.assert_close(got, data[i]["x"] * 2, atol=1e-2, rtol=1e-3)
    again = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, enc, data, progress=False)
    assert enc.seen == 10 and again.path == cache.path  # nothing encoded again


def test_a_changed_fingerprint_is_another_store(tmp_path):
    data, enc = _dataset(), Counting()
    a = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, enc, data, progress=False)
    b = TokenCache.get_or_build(tmp_path, {"encoder": "b"}, enc, data, progress=False)
    assert enc.seen == 20 and a.path != b.path
    # fewer samples also changes it
    c = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, enc, data[:5], progress=False)
    assert c.path != a.path and len(c) == 5


def test_module_fingerprint_follows_the_weights():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    before = module_fingerprint(net)
    assert module_fingerprint(net) == before
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-3
    assert module_fingerprint(net) != before
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    net2.load_state_dict(net.state_dict())
    assert module_fingerprint(net2) == module_fingerprint(net)


def test_a_failed_encoding_leaves_no_complete_store(tmp_path):
    data = _dataset()
    calls = {"n": 0}

    def failing(items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("encoder crashed")
        return torch.stack([it["x"] for it in items])

    with pytest.raises(RuntimeError, match="encoder crashed"):
        TokenCache.get_or_build(tmp_path, {"encoder": "a"}, failing, data, batch_size=4, shard_size=4, progress=False)
    assert not list(tmp_path.glob(f"*/{META_FILE}"))
    enc = Counting()  # the next call resumes after the one finished shard (samples 0-3)
    cache = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, enc, data, batch_size=4, shard_size=4, progress=False)
    assert enc.seen == 6 and len(cache) == 10 and cache.meta["shards"] == 3
    for i in (0, 3, 4, 9):  # shard 0 from the failed call (encoder without doubling), the rest from Counting
        torch.testing.assert_close(cache.tokens(i), data[i]["x"] * (1 if i < 4 else 2), atol=1e-2, rtol=1e-3)
    # the partial folder became the store (beside it, the build's lock file)
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"] == [cache.path.name]


def test_a_killed_encoding_leaves_no_complete_store(tmp_path):
    """SIGKILL in the middle of encoding (no Python cleanup runs): the store's folder never
    appears, and the next call resumes after the last finished shard."""
    script = textwrap.dedent(f"""
        import time, torch
        from medvtc.common.token_cache import TokenCache
        data = [{{"x": torch.full((4, 2), float(i))}} for i in range(40)]
        def slow(items):
            print("encoding", flush=True)
            time.sleep(0.2)
            return torch.stack([it["x"] for it in items])
        TokenCache.get_or_build({str(tmp_path)!r}, {{"encoder": "k"}}, slow, data, batch_size=2, shard_size=4, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # a few batches in, some shards already written
        assert proc.stdout.readline().startswith("encoding")
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(tmp_path.glob(f"*/{META_FILE}"))
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(name.startswith(".") for name in leftovers)  # only a hidden temporary folder
    data = [{"x": torch.full((4, 2), float(i))} for i in range(40)]
    enc = Counting(scale=1.0)
    cache = TokenCache.get_or_build(tmp_path, {"encoder": "k"}, enc, data, batch_size=2, shard_size=4, progress=False)
    assert cache.path.name == fingerprint_key(cache.fingerprint)
    assert 0 < enc.seen <= 40 - 4  # at least one shard (4 samples) was kept
    assert [float(cache.tokens(i)[0, 0]) for i in range(40)] == [float(i) for i in range(40)]


def test_a_resumed_build_equals_an_uninterrupted_one(tmp_path):
    """Augmented views are seeded per sample, so stopping and resuming changes nothing; an
    interrupted build of another fingerprint or shard size is cleared, not resumed."""
    data = _dataset(11)

    def shift(item, view, rng):
        return {"x": item["x"] + float(rng.standard_normal())}

    def build(root, enc, fp="a", shard_size=4):
        return TokenCache.get_or_build(root, {"encoder": fp}, enc, data, views=3, augment=shift, batch_size=2,
                                       shard_size=shard_size, progress=False)

    whole = build(tmp_path / "whole", Counting())
    calls = {"n": 0}

    def dies_at_batch_4(items):
        calls["n"] += 1
        if calls["n"] > 3 * 3:  # 3 views per batch: batch 4 (samples 6-7), after shard 0 (samples 0-3)
            raise KeyboardInterrupt
        return Counting()(items)

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "resumed", dies_at_batch_4)
    enc = Counting()
    resumed = build(tmp_path / "resumed", enc)
    assert enc.seen == (11 - 4) * 3
    for i in range(11):
        for v in range(3):
            assert torch.equal(resumed.tokens(i, v), whole.tokens(i, v)), (i, v)

    with pytest.raises(KeyboardInterrupt):  # interrupted again, then built under another shard size
        calls["n"] = 0
        build(tmp_path / "other", dies_at_batch_4)
    enc = Counting()
    other = build(tmp_path / "other", enc, shard_size=5)
    assert enc.seen == 11 * 3 and other.meta["shard_size"] == 5 and torch.equal(other.tokens(10, 2), whole.tokens(10, 2))
    assert sorted(p.name for p in (tmp_path / "other").iterdir() if p.suffix != ".lock") == [other.path.name]


def test_augmented_views_and_random_view_sampling(tmp_path):
    data = _dataset(4)

    def flip(item, view, rng):  # a seeded augmentation: the rng differs per (sample, view)
        return {"x": item["x"].flip(0) * float(rng.integers(1, 5))}

    cache = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, lambda items: torch.stack([it["x"] for it in items]), data,
                                    views=3, augment=flip, progress=False)
    assert cache.views == 3
    torch.testing.assert_close(cache.tokens(2, 0), data[2]["x"], atol=1e-2, rtol=1e-3)  # view 0: unaugmented
    v1 = cache.tokens(2, 1) / data[2]["x"].flip(0)
    assert torch.allclose(v1, v1.flatten()[0].expand_as(v1), atol=1e-2)  # a flipped, scaled copy
    ds = CachedTokenDataset(cache, [{"id": i} for i in range(4)], view="random")
    import random

    random.seed(0)
    seen = {tuple(ds[2]["tokens"].flatten()[:2].tolist()) for _ in range(30)}
    assert len(seen) >= 2 and ds[2]["id"] == 2
    with pytest.raises(ValueError, match="augment"):
        TokenCache.get_or_build(tmp_path / "b", {"encoder": "a"}, lambda items: None, data, views=2, progress=False)


def test_bad_encoder_output_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"expected \[2, N, D\]"):
        TokenCache.get_or_build(tmp_path, {"e": 1}, lambda items: torch.zeros(2, 3), _dataset(2), progress=False)
    assert not list(tmp_path.glob(f"*/{META_FILE}"))


def test_another_rank_waits_for_the_store_and_overflow_is_refused(tmp_path):
    data = _dataset(3)
    with pytest.raises(TimeoutError):
        TokenCache.wait_for(tmp_path, {"encoder": "a"}, 3, poll_s=0.01, timeout_s=0.05)
    built = TokenCache.get_or_build(tmp_path, {"encoder": "a"}, lambda items: torch.stack([it["x"] for it in items]), data,
                                    progress=False)
    assert TokenCache.wait_for(tmp_path, {"encoder": "a"}, 3, poll_s=0.01, timeout_s=1).path == built.path
    with pytest.raises(ValueError, match="not finite in float16"):
        TokenCache.get_or_build(tmp_path / "big", {"e": 1}, lambda items: torch.full((len(items), 2, 2), 1e6), data,
                                progress=False)
    assert not list((tmp_path / "big").glob(f"*/{META_FILE}"))


def test_a_second_process_waits_for_the_build_and_reuses_it(tmp_path):
    """Two callers ask for the same store at once (two bench variants started together): the
    second waits on the build's file lock, then reuses the store instead of encoding it again."""
    import threading

    data = _dataset(12)
    started, release = threading.Event(), threading.Event()

    class Held(Counting):
        def __call__(self, items):
            started.set()
            assert release.wait(30), "the test never released the first build"
            return super().__call__(items)

    first_enc, second_enc, logs, results = Held(), Counting(), [], {}
    first = threading.Thread(target=lambda: results.update(first=TokenCache.get_or_build(
        tmp_path, {"encoder": "a"}, first_enc, data, batch_size=4, shard_size=4, progress=False)))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: results.update(second=TokenCache.get_or_build(
        tmp_path, {"encoder": "a"}, second_enc, data, batch_size=4, shard_size=4, progress=False, log=logs.append)))
    second.start()
    for _ in range(300):  # until the second caller reports that it waits
        if logs:
            break
        time.sleep(0.01)
    assert logs and "being built by another process" in logs[0]
    assert "second" not in results
    release.set()
    first.join(30)
    second.join(30)
    assert first_enc.seen == 12 and second_enc.seen == 0
    assert results["second"].path == results["first"].path and "token cache reused" in logs[-1]
    assert torch.equal(results["second"].tokens(11), results["first"].tokens(11))
