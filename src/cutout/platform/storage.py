"""One storage API for local paths and ``s3://bucket/prefix`` URIs.

S3 access goes through boto3 and its own configuration (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, the credentials chain, ``~/.aws/config``), so the same code talks to AWS, MinIO
or a local test endpoint. Writes are atomic: a reader sees the old content or the new, never half.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

PathLike = str | os.PathLike[str]

# Standard mode retries throttling and transient errors with backoff (here "max_attempts" means
# retries after the first try, botocore's Config convention).
_RETRIES = Config(retries={"mode": "standard", "max_attempts": 5})
# Environment values that change which endpoint/account a client talks to (tests switch them).
_CLIENT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_PROFILE")  # fmt: skip
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_TMP_SUFFIX = ".cutout-tmp"  # marks in-flight local writes; list_files skips them
_clients: dict[tuple[str | None, ...], BaseClient] = {}
_clients_lock = threading.Lock()


def s3_client() -> BaseClient:
    """Return a boto3 S3 client for the current environment, cached per endpoint/region/key."""
    key = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    with _clients_lock:
        if key not in _clients:
            # A fresh Session per client: boto3's default session is not thread-safe to create from.
            _clients[key] = boto3.session.Session().client("s3", config=_RETRIES)
        return _clients[key]


def reset_clients() -> None:
    """Forget cached clients (tests call this after changing the AWS environment)."""
    with _clients_lock:
        _clients.clear()


# A forked worker must not inherit its parent's cached clients, whose pooled connections would then
# carry the requests of several processes at once. (The lock is re-created: it may be held at fork.)
def _forget_clients_after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def is_s3(uri: PathLike) -> bool:
    """Tell whether ``uri`` is an S3 URI (also true for ``s3:/…`` mangled by pathlib, to reject it)."""
    return os.fspath(uri).startswith("s3:")


def split_s3(uri: PathLike) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty.

    Raises:
        ValueError: if ``uri`` is not a well-formed S3 URI.
    """
    text = os.fspath(uri)
    if not text.startswith("s3://"):
        hint = " (an S3 URI passed through pathlib.Path loses a slash)" if text.startswith("s3:/") else ""
        raise ValueError(f"not an S3 URI: {text!r}{hint}")
    bucket, _, key = text[len("s3://") :].partition("/")
    if not bucket or any(c.isspace() for c in bucket):
        raise ValueError(f"malformed S3 URI, no bucket name: {text!r}")
    return bucket, key


def _object(uri: PathLike) -> tuple[str, str]:
    """Split an S3 URI that must name an object (non-empty key)."""
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"S3 URI names a prefix, not an object: {os.fspath(uri)!r}")
    return bucket, key


@contextlib.contextmanager
def _missing_as_fnf(uri: PathLike) -> Iterator[None]:
    """Turn botocore's 'no such key/bucket' errors into FileNotFoundError naming the URI."""
    try:
        yield
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in _MISSING_CODES:
            raise FileNotFoundError(errno.ENOENT, "No such S3 object", os.fspath(uri)) from err
        raise


def join(base: PathLike, *parts: PathLike) -> str:
    """Join path parts with ``/`` for S3 URIs and ``os.path.join`` for local paths."""
    base = os.fspath(base)
    if not is_s3(base):
        return os.path.join(base, *map(os.fspath, parts))
    pieces = [base.rstrip("/")] + [os.fspath(p).strip("/") for p in parts]
    return "/".join(p for p in pieces if p)


def read_bytes(uri: PathLike) -> bytes:
    """Read a whole file or object; raises FileNotFoundError naming ``uri`` if it is missing."""
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = _object(uri)
    with _missing_as_fnf(uri):
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()


def read_text(uri: PathLike, encoding: str = "utf-8") -> str:
    """Read a whole file or object as text."""
    return read_bytes(uri).decode(encoding)


@contextlib.contextmanager
def _atomic_local(path: PathLike, durable: bool = True) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success (fsync it and) move it over ``path`` in one step.

    Same folder because ``os.replace`` is only atomic within one filesystem. On failure the temp
    file is removed and ``path`` is left untouched. Without ``durable`` the rename is still atomic for
    readers, but a power cut may leave an empty file: fine for files that a later, durable write (a
    dataset's manifest) vouches for.
    """
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = os.path.join(
        os.path.dirname(target), f".{os.path.basename(target)}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
    )
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data must be on disk before the rename makes it visible
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(uri: PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` atomically, creating parent folders for local paths.

    ``durable=False`` skips the fsync of local files (see `_atomic_local`): a dataset step writes
    thousands of pair files, and syncing each one took most of its time.
    """
    if is_s3(uri):
        bucket, key = _object(uri)
        # A single PUT is atomic in S3: readers get the old object or the new one, never a part.
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    with _atomic_local(uri, durable) as tmp, open(tmp, "xb") as f:  # "x": plain mode, so umask applies
        f.write(data)


def write_text(uri: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` atomically."""
    write_bytes(uri, text.encode(encoding))


def exists(uri: PathLike) -> bool:
    """Tell whether an object (S3) or a file/folder (local) exists; an S3 prefix names no object."""
    if not is_s3(uri):
        return os.path.exists(uri)
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        return False
    try:
        with _missing_as_fnf(uri):
            s3_client().head_object(Bucket=bucket, Key=key)
    except FileNotFoundError:
        return False
    return True


def _walk_local(folder: str) -> Iterator[str]:
    """Yield files under ``folder`` in the order S3 lists the same keys (code-point order of paths).

    Sorting each folder's entries as ``name`` for files and ``name/`` for folders makes the depth-first
    order equal the lexicographic order of the full relative paths.
    """
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_local(entry.path)
        elif entry.is_file() and not entry.name.endswith(_TMP_SUFFIX):
            yield entry.path


def list_files(uri: PathLike, suffixes: tuple[str, ...] | None = None) -> Iterator[str]:
    """Yield every file under a folder or S3 prefix, recursively, in sorted order, as it is listed.

    Args:
        uri: a local folder or ``s3://bucket/prefix``; the prefix is a folder: ``s3://b/p`` lists
            ``p/…``, not ``p2/…``.
        suffixes: keep only names ending with one of these, compared case-insensitively.
    """
    wanted = tuple(s.lower() for s in suffixes or ())

    def keep(name: str) -> bool:
        return not wanted or name.lower().endswith(wanted)

    if not is_s3(uri):
        if os.path.isdir(uri):  # like an empty S3 prefix, a missing folder simply has no files
            yield from filter(keep, _walk_local(os.fspath(uri)))
        return
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    # S3 returns keys in UTF-8 binary order, page after page: yield per page, keep nothing.
    for page in pages:
        for obj in page.get("Contents", []):
            name = obj["Key"]
            if not name.endswith("/") and keep(name):  # keys ending in "/" are folder markers
                yield f"s3://{bucket}/{name}"


def delete(uri: PathLike) -> None:
    """Delete a file or object; a missing one is fine."""
    if is_s3(uri):
        bucket, key = _object(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)  # S3 DELETE is already idempotent
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(uri)


def copy(src: PathLike, dst: PathLike) -> None:
    """Copy one file/object between any mix of local paths and S3 URIs, streaming and atomically."""
    if is_s3(dst):
        bucket, key = _object(dst)
        if is_s3(src):
            src_bucket, src_key = _object(src)
            with _missing_as_fnf(src):
                s3_client().copy({"Bucket": src_bucket, "Key": src_key}, bucket, key)
        else:
            # Managed upload: multipart for big files, and S3 only shows the object once complete.
            s3_client().upload_file(os.fspath(src), bucket, key)
        return
    with _atomic_local(dst) as tmp:
        if is_s3(src):
            src_bucket, src_key = _object(src)
            with _missing_as_fnf(src):
                s3_client().download_file(src_bucket, src_key, tmp)
        else:
            shutil.copyfile(src, tmp)


@contextlib.contextmanager
def local_copy(uri: PathLike) -> Iterator[Path]:
    """Yield a local path to ``uri``'s content, for libraries that only open filenames.

    Local paths are yielded as they are; S3 objects are downloaded to a temp folder (keeping the
    file name, whose suffix some loaders use to pick a format) that is removed on exit.
    """
    if not is_s3(uri):
        if not os.path.exists(uri):
            raise FileNotFoundError(errno.ENOENT, "No such file", os.fspath(uri))
        yield Path(uri)
        return
    bucket, key = _object(uri)
    with tempfile.TemporaryDirectory(prefix="cutout-") as folder:
        path = Path(folder) / key.rsplit("/", 1)[-1]
        with _missing_as_fnf(uri):
            s3_client().download_file(bucket, key, str(path))
        yield path
