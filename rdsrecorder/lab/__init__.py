"""The lab: try and test rdsrecorder without AWS.

An emulator of the RDS log APIs (plus STS and snapshots) over a directory of csvlog files, a
local S3 (moto or SeaweedFS), a generator of realistic csvlog files, and optionally a real
PostgreSQL writing live, minute-rotated logs. See ``runner`` for the entry points, ``emulator``
and ``portion`` for what is emulated (and how faithfully), ``faults`` for the fault knobs.

Lab credentials: ``LAB_ACCESS_KEY_ID`` = ``LABACCESSKEY``, ``LAB_SECRET_ACCESS_KEY`` =
``labsecret``, region ``eu-west-1`` (not us-east-1, where the AWS CLI v1 ignores
``AWS_ENDPOINT_URL_RDS``).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from rdsrecorder.lab.faults import Faults
from rdsrecorder.lab.generate import GeneratedFile, Rotation, generate, generate_fleet
from rdsrecorder.lab.portion import MAX_LINES_PER_PORTION, MAX_PORTION_BYTES, TRUNCATION_NOTICE

if TYPE_CHECKING:
    from rdsrecorder.lab.emulator import (
        LAB_ACCESS_KEY_ID,
        LAB_REGION,
        LAB_SECRET_ACCESS_KEY,
        LabStats,
        RdsEmulator,
    )
    from rdsrecorder.lab.runner import Lab, LabThread, generate_main, lab_main

# The emulator and the runner are imported on first use: ``rdsrecorder.lab.cli`` is mounted in
# every rdsrecorder command, and they (aiohttp's server, the lab's SigV4 checks, the S3 servers)
# cost 0.1-0.2 s of start-up that no sync needs. (``generate`` stays eager: a lazy name would be
# shadowed by the submodule of the same name once anything imports it.)
_WHERE = {
    "LAB_ACCESS_KEY_ID": "emulator",
    "LAB_REGION": "emulator",
    "LAB_SECRET_ACCESS_KEY": "emulator",
    "LabStats": "emulator",
    "RdsEmulator": "emulator",
    "Lab": "runner",
    "LabThread": "runner",
    "generate_main": "runner",
    "lab_main": "runner",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
