"""One exception root for everything rdsrecorder reports to a user.

    RdsRecorderError                 exit 1  (generic)
    ├── ConfigError                  exit 2  bad flag, date, window, concurrency ...
    ├── PreflightError               exit 3  credentials, bucket, DB instance, permissions
    │   ├── CredentialsError
    │   ├── BucketError
    │   └── DbNotFoundError
    ├── AwsError                     exit 1  an AWS call failed after retries
    │   ├── ThrottledError
    │   └── LogFileGoneError         the log file vanished (expired / rotated away)
    ├── DownloadError                exit 1  a download misbehaved (marker stuck, binary data ...)
    ├── UploadError                  exit 1  an S3 upload failed (multipart aborted)
    ├── SnapshotError                exit 5  snapshot could not be created / failed
    ├── VerifyError                  exit 6  `verify` found a problem
    └── GetError (rdsrecorder.get)   exit 6  `get` found no copy of the DB in the window

Other exit codes, decided by the runner, not by an exception:
    0    every file in the window landed in S3 (and the snapshot, if any, was created)
    4    the run finished but some files failed or were lost (see the summary / manifest)
    130  interrupted by SIGINT / SIGTERM (graceful shutdown; re-run with the same --run-id)

botocore / aiohttp errors are translated once, where they are caught (rds.py, s3.py, aws.py);
the CLI prints ``str(error)`` as one line and exits with ``error.exit_code``.
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


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Error text for a log line or the manifest: control characters folded, bounded."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class RdsRecorderError(Exception):
    exit_code = EXIT_FAILURE


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


class DownloadError(RdsRecorderError):
    pass


class UploadError(RdsRecorderError):
    pass


class SnapshotError(RdsRecorderError):
    exit_code = EXIT_SNAPSHOT


class VerifyError(RdsRecorderError):
    exit_code = EXIT_VERIFY
