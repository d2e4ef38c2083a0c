"""``nightact doctor``: the backend nightact will use here, and what each backend sees.

The report comes from :func:`nightact.core.doctor.diagnose`, which imports no backend into this
process: each is asked in its own interpreter. The exit status is 1 when it found a problem (a
GPU the chosen backend cannot see, a backend that does not start), so a setup script can stop.
"""

from __future__ import annotations

import dataclasses
import json

from nightact.core.doctor import DEFAULT_TIMEOUT, diagnose, format_diagnosis

__all__ = ["add_doctor_parser"]


def add_doctor_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="show the backend, versions and the devices each installed backend sees",
        description=(
            "Show the Keras backend nightact will use and why, the versions of Keras, the "
            "backends, NumPy and PyAV, whether an NVIDIA GPU is present, and the devices each "
            "installed backend sees (each asked in its own process). Exits with 1 if it found "
            "a problem, such as an NVIDIA GPU that the chosen backend cannot see."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"the longest each backend may take to answer (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(handler=_doctor_command)


def _doctor_command(args) -> int:
    if args.timeout <= 0:
        raise ValueError(f"timeout must be positive, got {args.timeout:g}")
    diagnosis = diagnose(args.timeout)
    if args.json:
        print(json.dumps(dataclasses.asdict(diagnosis), indent=2))
    else:
        print(format_diagnosis(diagnosis))
    return 1 if diagnosis.problems else 0
