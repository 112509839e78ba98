"""rdsrecorder: copy RDS / Aurora PostgreSQL log files to S3 before RDS deletes them."""

__version__ = "0.1.0"
