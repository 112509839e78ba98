"""The S3 side: ``bucket`` (every S3 call, reads, small documents), ``upload`` (log objects),
``upload_config`` (S3's limits, the uploader's settings, part sizes) and ``spool`` (where parts
wait). Design: docs/design-uploads.md."""
