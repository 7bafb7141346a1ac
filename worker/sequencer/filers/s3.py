"""s3:// URLs through boto3: any S3-compatible endpoint, prefixes as directories, multipart.

This is the only module that imports boto3 or botocore (an import-linter contract says so).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
import boto3.s3.transfer
import botocore.config
import botocore.exceptions

from app.models import FileType
from worker.sequencer.filers.base import (
    FilerConfig,
    TransferError,
    TransientError,
    child_path,
    make_dirs,
    retrying,
)

#: Error codes S3 returns for "the object is not there".
_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
#: Error codes that mean the credentials or policy refuse the request.
_DENIED = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
#: Error codes that say "slow down" or "try later" although S3 may return them with a 4xx.
_RETRYABLE = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "ServiceUnavailable",
    }
)
#: botocore failures that are about the network, not the request.
_NETWORK_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    boto3.exceptions.RetriesExceededError,
)

#: boto3 errors that stand for the botocore error they replaced.
_WRAPPING_ERRORS: tuple[type[Exception], ...] = (
    boto3.exceptions.S3UploadFailedError,
    boto3.exceptions.S3TransferFailedError,
)


class S3Filer:
    """Transfers objects of one S3-compatible endpoint."""

    def __init__(self, config: FilerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._client_instance: Any = None
        self._transfer = boto3.s3.transfer.TransferConfig(
            multipart_threshold=config.multipart_threshold_bytes,
        )

    def download(self, url: str, dest: Path, kind: FileType) -> None:
        """Fetch one object (FILE) or every object under the prefix ``key/`` (DIRECTORY)."""
        bucket, key = _parse(url)
        if kind is FileType.DIRECTORY:
            self._download_prefix(url, bucket, key, dest)
            return
        if not key or key.endswith("/"):
            raise TransferError(
                f"{url}: names a bucket or a prefix, not an object; declare "
                "the input as DIRECTORY or give the object's key"
            )
        retrying(lambda: self._get(url, bucket, key, dest), self.config, f"download {url}")

    def upload(self, src: Path, url: str) -> None:
        """Store the file ``src`` at ``url``, in parts when it is large."""
        bucket, key = _parse(url)
        if not key or key.endswith("/"):
            raise TransferError(
                f"{url}: an output URL must name an object key, not a bucket or a prefix"
            )
        retrying(lambda: self._put(src, url, bucket, key), self.config, f"upload {url}")

    def _client(self) -> Any:
        # Built on first use and inside each operation's error mapping, so that a bad
        # endpoint setting surfaces as a TransferError like any other. One session per
        # filer, because boto3 sessions are not thread-safe (clients are).
        with self._lock:
            if self._client_instance is None:
                boto_config = botocore.config.Config(
                    s3={"addressing_style": "path" if self.config.s3_path_style else "auto"},
                    # Our own retry loop (config.retries) governs, so that every scheme
                    # retries alike and reports alike.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=self.config.timeout_seconds,
                    read_timeout=self.config.timeout_seconds,
                )
                self._client_instance = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.config.s3_endpoint_url,
                    region_name=self.config.s3_region,
                    config=boto_config,
                )
            return self._client_instance

    def _get(self, url: str, bucket: str, key: str, dest: Path) -> None:
        make_dirs(dest.parent)
        try:
            self._client().download_file(bucket, key, str(dest), Config=self._transfer)
        except Exception as exc:
            raise self._error(exc, url, bucket) from exc

    def _put(self, src: Path, url: str, bucket: str, key: str) -> None:
        if not src.is_file():
            raise TransferError(f"{url}: the local file {src} is gone")
        try:
            self._client().upload_file(str(src), bucket, key, Config=self._transfer)
        except Exception as exc:
            raise self._error(exc, url, bucket) from exc

    def _list(self, url: str, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            pages = (
                self._client()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=bucket, Prefix=prefix)
            )
            for page in pages:
                keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        except Exception as exc:
            raise self._error(exc, url, bucket) from exc
        return keys

    def _download_prefix(self, url: str, bucket: str, key: str, dest: Path) -> None:
        # "a/b" and "a/b/" both mean the objects whose keys start with "a/b/"; never "a/bc".
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        listing = f"s3://{bucket}/{prefix}"
        keys = retrying(lambda: self._list(url, bucket, prefix), self.config, f"list {listing}")
        if not keys:
            raise TransferError(
                f"{listing}: no objects under this prefix; check the URL (in S3 a "
                "directory exists only through the objects in it)"
            )
        make_dirs(dest)
        for object_key in keys:
            relative = object_key[len(prefix) :]
            if relative.endswith("/"):
                # A zero-byte "folder" marker, as consoles create: keep it as a directory.
                if relative.strip("/"):
                    make_dirs(child_path(dest, relative, url))
                continue
            target = child_path(dest, relative, url)
            object_url = f"s3://{bucket}/{object_key}"
            fetch = functools.partial(self._get, object_url, bucket, object_key, target)
            retrying(fetch, self.config, f"download {object_url}")

    def _error(self, exc: Exception, url: str, bucket: str) -> TransferError:
        if isinstance(exc, TransferError):
            return exc
        if isinstance(exc, _WRAPPING_ERRORS):
            # boto3 replaces the ClientError with a string; the original is its context.
            cause = exc.__context__
            if isinstance(cause, Exception) and not isinstance(cause, boto3.exceptions.Boto3Error):
                return self._error(cause, url, bucket)
            return TransferError(f"{url}: {exc}")
        if isinstance(exc, botocore.exceptions.ClientError):
            return self._client_error(exc, url, bucket)
        if isinstance(exc, _NETWORK_ERRORS):
            where = self.config.s3_endpoint_url or "AWS S3"
            return TransientError(f"{url}: cannot reach {where}: {exc}")
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
        ):
            return TransferError(
                f"{url}: no usable S3 credentials; the operator provides "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY through the "
                "storage Secret"
            )
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return TransferError(f"{url}: {exc}")
        if isinstance(exc, OSError):
            return TransferError(f"{url}: local file error: {exc.strerror or exc}")
        return TransferError(f"{url}: unexpected {type(exc).__name__}: {exc}")

    def _client_error(self, exc: Any, url: str, bucket: str) -> TransferError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = str(error.get("Message") or code or status)
        if code == "NoSuchBucket":
            return TransferError(f"s3://{bucket}: no such bucket")
        if code in _MISSING_KEY:
            # HEAD requests carry no error body, so a 404 may mean the bucket; ask once.
            if not self._bucket_exists(bucket):
                return TransferError(f"s3://{bucket}: no such bucket")
            return TransferError(f"{url}: no such key")
        if code in _DENIED or status == 403:
            return TransferError(
                f"{url}: access denied ({detail}); check the S3 credentials "
                "of this service and the bucket's policy"
            )
        if code in _RETRYABLE or status >= 500:
            return TransientError(f"{url}: S3 error {code or status}: {detail}")
        return TransferError(f"{url}: S3 error {code or status}: {detail}")

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self._client().head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return code not in ("404", "NoSuchBucket", "NotFound")
        except Exception:
            # Unsure: say "no such key", the likelier reading, rather than fail differently.
            return True
        return True


def _parse(url: str) -> tuple[str, str]:
    # Not urlsplit: S3 keys may hold "?", "#" and "%" literally, as the AWS CLI treats them.
    scheme, rest = url[:5], url[5:]
    bucket, _, key = rest.partition("/")
    if scheme.lower() != "s3://" or not bucket:
        raise TransferError(f"{url}: not an s3://bucket/key URL")
    return bucket, key


def make(config: FilerConfig) -> S3Filer:
    """Return the s3:// filer."""
    return S3Filer(config)
