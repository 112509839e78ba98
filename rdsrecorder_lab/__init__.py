"""The lab: try and test rdsrecorder without AWS (installed by the ``[lab]`` extra).

An emulator of the RDS log APIs (plus STS and snapshots) over a directory of csvlog files, a
local S3 (moto or SeaweedFS), a generator of realistic csvlog files, and optionally a real
PostgreSQL writing live, minute-rotated logs. See ``runner`` for the entry points, ``emulator``
and ``portion`` for what is emulated (and how faithfully), ``faults`` for the fault knobs, and
docs/lab.md for how to run it.

The runtime package ``rdsrecorder`` never imports this one: ``rdsrecorder lab ...`` imports it
when the command runs.

Lab credentials: ``LAB_ACCESS_KEY_ID`` = ``LABACCESSKEY``, ``LAB_SECRET_ACCESS_KEY`` =
``labsecret``, region ``eu-west-1`` (not us-east-1, where the AWS CLI v1 ignores
``AWS_ENDPOINT_URL_RDS``).
"""

from rdsrecorder_lab.emulator import (
    LAB_ACCESS_KEY_ID,
    LAB_REGION,
    LAB_SECRET_ACCESS_KEY,
    LabStats,
    RdsEmulator,
)
from rdsrecorder_lab.faults import Faults
from rdsrecorder_lab.generate import GeneratedFile, Rotation, generate, generate_fleet
from rdsrecorder_lab.portion import MAX_LINES_PER_PORTION, MAX_PORTION_BYTES, TRUNCATION_NOTICE
from rdsrecorder_lab.runner import Lab, LabThread, generate_main, lab_main

__all__ = [
    "LAB_ACCESS_KEY_ID",
    "LAB_REGION",
    "LAB_SECRET_ACCESS_KEY",
    "MAX_LINES_PER_PORTION",
    "MAX_PORTION_BYTES",
    "TRUNCATION_NOTICE",
    "Faults",
    "GeneratedFile",
    "Lab",
    "LabStats",
    "LabThread",
    "RdsEmulator",
    "Rotation",
    "generate",
    "generate_fleet",
    "generate_main",
    "lab_main",
]
