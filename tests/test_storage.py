"""Storage layer: the same behaviour on local folders and on S3 (moto server over HTTP)."""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cutout.platform import storage


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable root: a local folder or a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket")


def test_client_talks_to_the_local_endpoint(s3_bucket: str, s3_endpoint: str) -> None:
    assert s3_endpoint.startswith("http://127.0.0.1:")
    client = storage.s3_client()
    assert client.meta.endpoint_url == s3_endpoint
    # botocore counts "max_attempts" in Config as retries: 5 retries = 6 attempts in all.
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    bucket, _ = storage.split_s3(s3_bucket)
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_clients_are_cached_per_environment(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = storage.s3_client()
    assert storage.s3_client() is first
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    other = storage.s3_client()
    assert other is not first
    assert other.meta.endpoint_url == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://b", ("b", "")), ("s3://b/", ("b", "")), ("s3://b/k/x.png", ("b", "k/x.png"))],
)
def test_split_s3(uri: str, expected: tuple[str, str]) -> None:
    assert storage.is_s3(uri)
    assert storage.split_s3(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "s3:/bucket/key", "/local/path", "http://b/k"])
def test_malformed_s3_uris_raise(uri: str) -> None:
    with pytest.raises(ValueError, match="S3 URI"):
        storage.split_s3(uri)


def test_s3_object_operations_need_a_key(s3_bucket: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        storage.write_bytes(s3_bucket + "/folder/", b"x")


def test_join() -> None:
    assert storage.join("s3://b", "a", "b.png") == "s3://b/a/b.png"
    assert storage.join("s3://b/p/", "/a/", "", "c") == "s3://b/p/a/c"
    assert storage.join(Path("/data"), "images", Path("x.png")) == os.path.join("/data", "images", "x.png")
    assert storage.is_s3(Path("/data")) is False


def test_round_trip_bytes_and_text(base: str) -> None:
    uri = storage.join(base, "deep", "nested", "x.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    storage.write_text(storage.join(base, "t.txt"), "U²-Net ✓")
    assert storage.read_text(storage.join(base, "t.txt")) == "U²-Net ✓"


def test_path_objects_are_accepted(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    storage.write_text(target, "hi")
    assert storage.read_text(target) == "hi"
    assert list(storage.list_files(tmp_path)) == [str(target)]


def test_missing_raises_file_not_found_naming_the_uri(base: str) -> None:
    uri = storage.join(base, "nope", "missing.png")
    for action in (storage.read_bytes, storage.read_text):
        with pytest.raises(FileNotFoundError, match=re.escape(uri)) as info:
            action(uri)
        assert info.value.filename == uri
    with pytest.raises(FileNotFoundError, match=re.escape(uri)), storage.local_copy(uri):
        pass
    with pytest.raises(FileNotFoundError, match=re.escape(uri)):
        storage.copy(uri, storage.join(base, "dst.png"))


def test_missing_bucket_is_file_not_found(s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket-xyz/k"):
        storage.read_bytes("s3://no-such-bucket-xyz/k")


def test_list_files_recursive_sorted_and_filtered(base: str) -> None:
    names = ["b.PNG", "ü n.png", "a/z.jpg", "a/b/c.png", "a0.txt", "a.txt", "c/notes.md", "a/y.png"]
    for name in names:
        storage.write_bytes(storage.join(base, "ds", *name.split("/")), b"x")
    listed = list(storage.list_files(storage.join(base, "ds")))
    expected = [storage.join(base, "ds", *n.split("/")) for n in sorted(names)]
    assert listed == expected  # same (lexicographic) order on both backends
    images = list(storage.list_files(storage.join(base, "ds"), suffixes=(".png", ".JPG")))
    assert [p.rsplit("/", 1)[-1] for p in images] == ["c.png", "y.png", "z.jpg", "b.PNG", "ü n.png"]


def test_list_files_prefix_is_a_folder(base: str) -> None:
    storage.write_bytes(storage.join(base, "p", "in.txt"), b"1")
    storage.write_bytes(storage.join(base, "p2", "out.txt"), b"2")
    storage.write_bytes(storage.join(base, "p.txt"), b"3")
    assert list(storage.list_files(storage.join(base, "p"))) == [storage.join(base, "p", "in.txt")]
    assert list(storage.list_files(storage.join(base, "p") + "/")) == [storage.join(base, "p", "in.txt")]
    assert list(storage.list_files(storage.join(base, "absent"))) == []


def test_delete(base: str) -> None:
    uri = storage.join(base, "d", "x.txt")
    storage.write_text(uri, "x")
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # missing is fine


def test_copy_any_direction(base: str, tmp_path: Path) -> None:
    local_src = tmp_path / "src" / "model.onnx"
    storage.write_bytes(local_src, b"weights")
    remote = storage.join(base, "models", "model.onnx")
    storage.copy(local_src, remote)  # local → base
    storage.copy(remote, storage.join(base, "copy", "model.onnx"))  # base → base
    back = tmp_path / "back" / "model.onnx"
    storage.copy(storage.join(base, "copy", "model.onnx"), back)  # base → local
    assert back.read_bytes() == b"weights"
    assert [p.name for p in back.parent.iterdir()] == ["model.onnx"]  # no temp file left


def test_local_copy(base: str) -> None:
    uri = storage.join(base, "m", "net.pth")
    storage.write_bytes(uri, b"state")
    with storage.local_copy(uri) as path:
        assert isinstance(path, Path)
        assert path.name == "net.pth"
        assert path.read_bytes() == b"state"
    # A downloaded copy is removed on exit; a local file is the file itself and stays.
    assert path.exists() == (not storage.is_s3(uri))


def test_local_write_failure_leaves_target_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "manifest.jsonl"
    storage.write_text(target, "old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk unplugged")

    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk unplugged"):
        storage.write_text(target, "new\n" * 1000)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.jsonl"]


def test_local_write_replaces_whole_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    storage.write_bytes(target, b"A" * 100_000)
    storage.write_bytes(target, b"B" * 10)
    assert target.read_bytes() == b"B" * 10
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert target.stat().st_mode == reference.stat().st_mode  # umask applies, not mkstemp's 0600


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    size = 256 * 1024
    storage.write_bytes(target, b"A" * size)
    stop = threading.Event()

    def writer() -> None:
        for i in range(60):
            storage.write_bytes(target, (b"B" if i % 2 else b"A") * size)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not stop.is_set():
        data = storage.read_bytes(target)
        assert len(data) == size and data in (b"A" * size, b"B" * size)
        assert all(p.endswith("shared.bin") for p in storage.list_files(tmp_path))
        seen += 1
    thread.join()
    assert seen > 0


def test_list_files_pages_past_1000_and_streams(s3_bucket: str) -> None:
    client = storage.s3_client()
    bucket, _ = storage.split_s3(s3_bucket)
    keys = [f"many/{i:05d}.png" for i in range(1005)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"."), keys))

    calls: list[str] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: calls.append("list"))
    listing = storage.list_files(s3_bucket + "/many")
    assert next(listing) == f"{s3_bucket}/many/00000.png"
    assert len(calls) == 1  # the first key arrives before the second page is asked for
    rest = list(listing)
    assert len(calls) == 2
    assert [f"{s3_bucket}/{k}" for k in keys] == [f"{s3_bucket}/many/00000.png", *rest]
