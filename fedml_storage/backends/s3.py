"""S3 and R2 (and any S3-compatible endpoint) through boto3 and s3transfer."""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import botocore.exceptions
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker
from s3transfer.manager import TransferConfig, TransferManager

from .. import stops
from ..abandon import parallel_map
from ..advice import NO_BUCKET
from ..config import StorageSettings
from ..errors import AccessDenied, IntegrityError, NotConfigured, PreconditionFailed, TransientError
from ..streams import Readable
from .base import Leftovers, ObjectInfo, ObjectMissing, ObjectStore, Progress, Sink, pipelined_copy
from .ranges import (RANGE_ADVICE, RANGE_ATTEMPTS, Counted, RangeIgnored, StreamProbe, Unanswered, fetch_ranges,
                     ranges_pay)
from .responses import register as check_responses
from .s3_client import s3_client
from .s3_errors import MISSING_CODES, translate as _translate, web_page_answer
from .s3_retries import say_retries
from .s3_transfers import Done, PlainFiles, Progress as TransferProgress, finish

log = logging.getLogger("fedml_storage")

IO_CHUNK = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
# botocore's standard retry mode's own rules (transient statuses and codes, throttling, broken connections)
_BOTOCORE_RETRIES = (TransientRetryableChecker(), ThrottledRetryableChecker())


def _retried_by_botocore(cause: BaseException | None) -> bool:
    """Whether botocore asked again after `cause` (so max_attempts were spent on it)."""
    if isinstance(cause, botocore.exceptions.ClientError):
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        context = RetryContext(1, parsed_response=cause.response, http_response=SimpleNamespace(status_code=status))
    elif isinstance(cause, botocore.exceptions.BotoCoreError):
        context = RetryContext(1, caught_exception=cause)
    else:
        return False
    return any(checker.is_retryable(context) for checker in _BOTOCORE_RETRIES)


class S3Store(ObjectStore):
    """One bucket (and namespace prefix handled by the catalog) on an S3 API."""

    def __init__(self, settings: StorageSettings) -> None:
        self.service = settings.service
        if not settings.bucket:
            raise NotConfigured(f"no bucket configured for {settings.service}; {NO_BUCKET}")
        self.bucket = settings.bucket
        endpoint = settings.resolved_endpoint
        self._client = s3_client(settings)
        check_responses(self._client, settings.max_attempts)
        self._upload_config = TransferConfig(
            multipart_threshold=settings.part_size,
            multipart_chunksize=settings.part_size,
            max_request_concurrency=settings.concurrency,
            max_in_memory_upload_chunks=settings.concurrency,
        )
        self._download_part_size = settings.download_part_size
        self._concurrency = settings.concurrency
        self._download_threshold = settings.download_threshold
        self._stream_min_rate = settings.stream_min_rate
        self._transfers: TransferManager | None = None
        self._location = f"{endpoint.rstrip('/')}/{self.bucket}" if endpoint else f"s3://{self.bucket}"
        say_retries(self._client, self._location)

    def _manager(self) -> TransferManager:
        if self._transfers is None:
            self._transfers = TransferManager(self._client, self._upload_config, osutil=PlainFiles(),
                                              executor_cls=stops.TransferThreads)
        return self._transfers

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        done = Done()
        subs = [done, *([TransferProgress(progress)] if progress else [])]
        with _translate(key, self._location):
            finish(self._manager().upload(str(path), self.bucket, key, subscribers=subs), done.event)

    def put_stream(self, key: str, stream: Readable, progress: Progress | None = None,
                   size_bound: int | None = None) -> None:
        done = Done()
        subs = [done, *([TransferProgress(progress)] if progress else [])]
        part = self._upload_config.multipart_chunksize
        manager = self._manager()
        if size_bound is not None and size_bound > MAX_PARTS * part:
            # s3transfer cannot size the parts of a stream of unknown length: past MAX_PARTS parts S3 refuses the
            # rest. Larger parts, as many in memory as the configured ones make (fewer in flight, each larger).
            bigger = -(-size_bound // (MAX_PARTS * IO_CHUNK)) * IO_CHUNK  # whole MiB
            held = max(1, self._upload_config.max_in_memory_upload_chunks * part // bigger)
            manager = TransferManager(self._client, TransferConfig(
                multipart_threshold=bigger, multipart_chunksize=bigger, max_request_concurrency=held,
                max_in_memory_upload_chunks=held), executor_cls=stops.TransferThreads)
        try:
            with _translate(key, self._location):
                finish(manager.upload(stream, self.bucket, key, subscribers=subs), done.event,
                        getattr(stream, "close_reader", None))
        finally:
            if manager is not self._transfers:  # made for this upload alone
                manager.shutdown()

    def get_into(self, key: str, sink: Sink, size: int, progress: Progress | None = None, start: int = 0) -> None:
        # One streamed GET, verified as it arrives; when that stream proves slow over its first part (real S3
        # serves ~100 MB/s per connection) the rest comes in parallel ranges. Streaming first suits servers
        # where every ranged GET re-reads the object (moto, small gateways). Huge objects go ranged at once.
        if start and start >= size:  # all kept from an earlier try (a Range past the end is an error to S3)
            return
        got = start
        if size - start <= self._download_threshold or self._concurrency < 2:
            switch_at = self._stream_into(key, sink, start, size, progress)
            if switch_at is None:
                return
            got = switch_at
        fetch_ranges(lambda lo, hi: self._open_range(key, lo, hi, size), got, size, self._download_part_size,
                     self._concurrency, sink, progress)

    def _stream_into(self, key: str, sink: Sink, start: int, size: int, progress: Progress | None) -> int | None:
        """Stream the object from byte `start` into `sink`, going on with a ranged GET from where a broken read
        stopped. Returns None once all is in, or the offset from which parallel ranges fetch the rest (the stream
        proved slow)."""
        part, workers = self._download_part_size, self._concurrency
        probing = self._stream_min_rate > 0 and workers >= 2 and size - start >= 3 * part
        got = start
        broke: TransientError | None = None
        for attempt in range(RANGE_ATTEMPTS):
            requested_at = time.monotonic()
            stream = Counted(self._open_range(key, got, size, size) if got else self._open_whole(key, size))
            try:
                if probing and attempt == 0:
                    probe = StreamProbe(stream, part, requested_at)
                    pipelined_copy(probe, sink, progress)
                    if ranges_pay(probe, size - got - stream.got, part, workers, self._stream_min_rate):
                        log.info("%s streams at %.0f MB/s: fetching the rest in parallel ranges", key, probe.rate / 1e6)
                        return got + stream.got
                pipelined_copy(stream, sink, progress)
                if got + stream.got < size:  # a body cut short without an error (no length to check it against)
                    raise TransientError(f"the answer for {key!r} ended after {got + stream.got} of {size} bytes")
                return None
            except TransientError as exc:
                got += stream.got
                if isinstance(exc, Unanswered) or got >= size or attempt == RANGE_ATTEMPTS - 1:
                    raise
                broke = exc
                log.info("the download of %s broke after %d of %d bytes; going on from there", key, got, size)
            except RangeIgnored:
                if broke is None:
                    raise
                raise broke from None  # no ranges here to go on with: the break itself is what to report (retryable)
            finally:
                stream.close()
        raise AssertionError("not reached: the last attempt returns or raises")

    def _open_whole(self, key: str, size: int) -> Iterator[bytes]:
        resp = self._asked(key, lambda: self._client.get_object(Bucket=self.bucket, Key=key))
        with _translate(key, self._location):
            body = resp["Body"]
            try:
                length = resp.get("ContentLength")  # none when chunked: a short body is caught by its count
                if length is not None and length != size:  # the stored object is not what the manifest says?
                    raise self._size_mismatch(key, size, length)
                yield from body.iter_chunks(IO_CHUNK)
            finally:
                body.close()

    def _open_range(self, key: str, lo: int, hi: int, size: int) -> Iterator[bytes]:
        """The bytes [lo, hi) of an object of `size` bytes, as chunks."""
        def ask() -> dict:
            try:
                return self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={lo}-{hi - 1}")
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    raise _short_object(key, size, None) from None
                raise

        resp = self._asked(key, ask)
        with _translate(key, self._location):
            body = resp["Body"]
            try:
                total = str(resp.get("ContentRange", "")).rpartition("/")[2]
                if total.isdigit() and int(total) != size:
                    raise self._size_mismatch(key, size, int(total))
                length = resp.get("ContentLength")
                if length != hi - lo:
                    if length == size or not resp.get("ContentRange"):  # the whole object: no ranges here
                        raise RangeIgnored(f"{self._location} ignored a byte range of {key!r}; {RANGE_ADVICE}")
                    raise TransientError(f"the answer for bytes {lo}-{hi - 1} of {key!r} does not add up "
                                         f"({length} bytes): cut short in transit")
                yield from body.iter_chunks(IO_CHUNK)
            finally:
                body.close()

    def _asked(self, key: str, request: Callable[[], dict]) -> dict:
        """The answer to a GET; a transient failure botocore already retried (max_attempts) is Unanswered (one it
        does not retry, a 520 say, is asked again by the callers' loops)."""
        try:
            with _translate(key, self._location):
                return request()
        except TransientError as exc:
            if _retried_by_botocore(exc.__context__):
                raise Unanswered(str(exc)) from None
            raise  # an answer cut short or unparsable (botocore does not ask again): going on may help

    def _size_mismatch(self, key: str, size: int, told: int) -> Exception:
        """An answer gave the object another size than its manifest: corrupt data, or (when the store, asked again,
        says the recorded size) an answer whose header was cut inside its value."""
        info = self.head(key)
        if info is not None and info.size == size:
            return TransientError(f"an answer gave {key!r} as {told} bytes, the store as {size}: it was cut short in "
                                  "transit")
        return _short_object(key, size, told if info is None else info.size)

    def read_bytes(self, key: str) -> tuple[bytes, str]:
        for _ in range(RANGE_ATTEMPTS - 1):
            try:
                return self._read_once(key)
            except _BodyBroke:  # the answer began and then broke off (botocore retries only the request): ask again
                continue
        return self._read_once(key)  # the last try: its failure is the one to report

    def _read_once(self, key: str) -> tuple[bytes, str]:
        with _translate(key, self._location):
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
        if str(resp.get("ContentType", "")).lower().startswith("text/html"):  # what write_bytes stores is JSON
            resp["Body"].close()
            raise NotConfigured(web_page_answer(self._location))
        try:
            with _translate(key, self._location):
                return resp["Body"].read(), resp["ETag"]
        except TransientError as exc:
            raise _BodyBroke(str(exc)) from None

    def write_bytes(self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False) -> str:
        kwargs = {}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            with _translate(key, self._location, conditional=bool(kwargs)):
                resp = self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentType="application/json", **kwargs
                )
        except ObjectMissing:  # If-Match on a key deleted meanwhile
            raise PreconditionFailed(key) from None
        return resp["ETag"]

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with _translate(key, self._location):
                resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except ObjectMissing:
            return None
        return ObjectInfo(key, resp["ContentLength"], resp.get("ETag"), resp["LastModified"].timestamp())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with _translate(prefix, self._location):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], item["Size"], item.get("ETag"), item["LastModified"].timestamp())

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        kwargs = {"IfMatch": if_match} if if_match is not None else {}
        try:
            with _translate(key, self._location, conditional=bool(kwargs)):
                self._client.delete_object(Bucket=self.bucket, Key=key, **kwargs)
        except ObjectMissing:
            pass

    def delete_many(self, keys: builtins.list[str]) -> builtins.list[str]:
        failed: builtins.list[str] = []
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            if batch:
                with _translate(batch[0]["Key"], self._location):
                    resp = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                failed += [e["Key"] for e in resp.get("Errors", []) if e.get("Code") not in MISSING_CODES]
        return failed

    def remove_leftovers(self, data_prefix: str, older_than: float) -> Leftovers:
        """Multipart uploads under `data_prefix` that interrupted uploads left (none for a key that may not list or
        abort them: said in a warning, the rest of a cleanup stands)."""
        try:
            return self._abort_stale_uploads(data_prefix, older_than)
        except AccessDenied as exc:
            log.warning("cleanup left incomplete multipart uploads alone: %s. Listing and aborting them needs the "
                        "s3:ListBucketMultipartUploads and s3:AbortMultipartUpload permissions (or let a lifecycle "
                        "rule, AbortIncompleteMultipartUpload, remove them)", exc)
            return Leftovers()

    def _abort_stale_uploads(self, prefix: str, older_than: float) -> Leftovers:
        """Abort multipart uploads under `prefix` idle since before `older_than` (started then, and no part
        since: a long upload still sending parts is kept)."""

        def abort_if_idle(upload: dict) -> bool | None:
            """True when aborted, False when kept (a part came since), None when it ended meanwhile."""
            key, upload_id = upload["Key"], upload["UploadId"]
            try:
                if self._last_part_at(key, upload_id) >= older_than:
                    return False
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return None  # completed or aborted meanwhile
                raise
            return True

        with _translate(prefix, self._location):
            paginator = self._client.get_paginator("list_multipart_uploads")
            uploads = [upload for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                       for upload in page.get("Uploads", [])]
            old = [upload for upload in uploads if upload["Initiated"].timestamp() < older_than]
            done = parallel_map(abort_if_idle, old, self._concurrency, "fedml-storage-cleanup")
            return Leftovers(removed=done.count(True), kept=len(uploads) - len(old) + done.count(False))

    def _last_part_at(self, key: str, upload_id: str) -> float:
        """When the newest part of a multipart upload arrived (0 when it has none)."""
        latest = 0.0
        paginator = self._client.get_paginator("list_parts")
        for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
            for part in page.get("Parts", []):
                latest = max(latest, part["LastModified"].timestamp())
        return latest

    def close(self) -> None:
        if self._transfers is not None:
            self._transfers.shutdown()
            self._transfers = None
        self._client.close()


class _BodyBroke(TransientError):
    """An answer's body broke off after the answer began."""


def _short_object(key: str, size: int, actual: int | None) -> IntegrityError:
    found = "smaller" if actual is None else f"{actual} bytes"
    return IntegrityError(f"the stored data {key!r} is corrupt: it is {found}, not the {size} bytes its manifest "
                          "records; upload the dataset again")
