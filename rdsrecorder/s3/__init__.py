"""The S3 side: ``bucket`` (every S3 call, reads, small documents) and ``upload`` (log objects)."""
