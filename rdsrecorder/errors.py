"""One exception root for everything rdsrecorder reports to a user.

    RdsRecorderError                 exit 1  (generic)
    ├── ConfigError                  exit 2  bad flag, date, window, concurrency ...
    ├── QueryError (rdsrecorder.query) exit 2  `query`'s statement refused by the engine
    ├── PreflightError               exit 3  credentials, bucket, DB instance, permissions
    │   ├── CredentialsError
    │   ├── BucketError
    │   ├── DbNotFoundError
    │   ├── OwnerError               the run id belongs to another DB (checked per write)
    │   ├── RecordError              a run's manifest is unreadable, mistyped or foreign
    │   └── ListingDeniedError (rdsrecorder.rds.control)  DescribeDBLogFiles not allowed
    ├── AwsError                     exit 1  an AWS call failed after retries
    │   ├── ThrottledError
    │   ├── LogFileGoneError         the log file vanished (expired / rotated away)
    │   └── StoppedError             exit 130  AWS did not answer before the shutdown deadline
    ├── DownloadError                exit 1  a download misbehaved (marker stuck, binary data ...)
    │   ├── ShortBodyError           a whole-file stream ended cleanly before the listed size
    │   ├── SourceChangedError       the file ended short, shrank or changed while being read
    │   └── UnsafeNameError          a file name from the API that cannot be put in a URL
    ├── UploadError                  exit 1  an S3 upload failed (multipart aborted)
    │   ├── KeyTakenError            412: the key holds an object already (nothing written)
    │   └── WriteConflictError       409: a write raced another one on the key (redo it)
    ├── PgbadgerError (rdsrecorder.pgbadger)  exit 1  pgbadger failed (the files stay written)
    ├── SnapshotError                exit 5  snapshot could not be created / failed
    ├── VerifyError                  exit 6  `verify` found a problem
    └── GetError (rdsrecorder.get)   exit 6  `get` found no copy of the DB in the window
        └── NoCopyError                       (for `query`, an empty window: exit 0)

Other exit codes, decided by the runner, not by an exception:
    0    every file in the window landed in S3 (and the snapshot, if any, was created)
    4    the run finished but some files failed or were lost (see the summary / manifest)
    130  interrupted by SIGINT / SIGTERM (graceful shutdown; re-run with the same --run-id)

botocore errors are translated once, by ``rdsrecorder.aws.translate`` (every SDK call goes through
``Aws.run``); the raw HTTP reads (rds/download.py's whole-file GET, s3/bucket.py's object reads)
turn aiohttp errors into these where they catch them. The CLI prints ``str(error)`` as one line
and exits with ``error.exit_code``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_PREFLIGHT = 3
EXIT_INCOMPLETE = 4
EXIT_SNAPSHOT = 5
EXIT_VERIFY = 6
EXIT_INTERRUPTED = 130
MAX_MESSAGE_CHARS = 300  # an error in a log line or the manifest: one bounded line
MAX_ERROR_CHARS = 1000  # any error's text, whatever it quotes


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Error text for a log line or the manifest: control characters folded, bounded."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class RdsRecorderError(Exception):
    exit_code = EXIT_FAILURE

    def __init__(self, *args: object) -> None:
        # Messages may quote AWS answers (an XML body, a log line): bounded at the source.
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0], MAX_ERROR_CHARS),)
        super().__init__(*args)


class ConfigError(RdsRecorderError):
    exit_code = EXIT_CONFIG


class PreflightError(RdsRecorderError):
    exit_code = EXIT_PREFLIGHT


class CredentialsError(PreflightError):
    pass


class BucketError(PreflightError):
    pass


class DbNotFoundError(PreflightError):
    pass


class AwsError(RdsRecorderError):
    """An AWS call failed for good (after retries). ``code`` is the AWS error code, if any."""

    def __init__(self, message: str, code: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation


class ThrottledError(AwsError):
    pass


class LogFileGoneError(AwsError):
    """DBLogFileNotFoundFault: the file expired or rotated away while we read it."""


class StoppedError(AwsError):
    """A call cut short by the shutdown deadline (``--shutdown-grace`` after a stop): the run was
    interrupted, whatever AWS would have answered."""

    exit_code = EXIT_INTERRUPTED


class DownloadError(RdsRecorderError):
    pass


class ShortBodyError(DownloadError):
    """The whole-file stream ended cleanly with fewer bytes than listed (retried, then portions)."""


class SourceChangedError(DownloadError):
    """The file did not arrive as listed: it ended short, or its size or LastWritten changed while
    it was read. ``current`` is how RDS lists it now (None when the listing could not tell)."""

    def __init__(self, message: str, current: object = None) -> None:
        super().__init__(message)
        self.current = current


class UnsafeNameError(DownloadError):
    """A log file name that cannot be used in the whole-file URL (``..``, empty segments)."""


class OwnerError(PreflightError):
    """The run id's manifest names another DB: this process must not write under it."""


class RecordError(PreflightError):
    """A run's record (manifest) in S3 that cannot be used: not JSON, fields of the wrong type
    or shape, or the record of another run."""


class UploadError(RdsRecorderError):
    pass


class KeyTakenError(UploadError):
    """A conditional write (``If-None-Match: *``) found its key taken: nothing was written.
    ``result`` is what the upload would have stored (an ``UploadResult``), to compare with what
    the key holds."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class WriteConflictError(UploadError):
    """409 ConditionalRequestConflict: another write to the key raced this one; nothing was
    written, and the upload is done again from the start."""


class SnapshotError(RdsRecorderError):
    exit_code = EXIT_SNAPSHOT


class VerifyError(RdsRecorderError):
    exit_code = EXIT_VERIFY
