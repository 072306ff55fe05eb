"""Check a recurring run's cron expression before KFP gets it.

KFP's scheduler reads six fields, seconds first (`robfig/cron`):

    second  minute  hour  day-of-month  month  day-of-week
    0-59    0-59    0-23  1-31 or ?     1-12   0-6 or ? (0 = Sunday)
                                        JAN-DEC SUN-SAT

Each field is `*`, a value, a range `a-b`, a list `a,b`, and any of these with a step `/n`; or one of the
descriptors `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`, `@every <duration>`. A five-field
expression, as crontab and Kubernetes CronJobs write it, would be read with its minute as the second: it is
refused, with the six-field expression it probably meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EVERY = re.compile(r"^@every\s+(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names of the values from `low` on
    question_mark: bool = False  # `?` (no specific value) is allowed


FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31, question_mark=True),
    _Field("month", 1, 12, _MONTHS),
    _Field("day of week", 0, 6, _DAYS, question_mark=True),
)


class CronError(ValueError):
    """A cron expression KFP would refuse or misread; the message says why and how to fix it."""


def validate_cron(expression: str) -> str:
    """Return the expression, whitespace-normalised, if KFP's six-field cron accepts it.

    Raises:
        CronError: A wrong number of fields (five: with the six-field form it probably meant), or a
            field whose value is out of range or malformed.
    """
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() in DESCRIPTORS or _EVERY.match(text):
            return text
        raise CronError(f"unknown cron descriptor {text!r}: use one of {', '.join(DESCRIPTORS)} "
                        "or '@every <duration>' (e.g. '@every 6h')")  # fmt: skip
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        raise CronError(
            f"{text!r} has 5 fields, but KFP recurring runs want 6, seconds first "
            f"(second minute hour day-of-month month day-of-week): for this schedule use '0 {text}'"
        )
    if len(fields) != 6:
        raise CronError(
            f"{text!r} has {len(fields)} fields; KFP recurring runs want 6, seconds first "
            "(second minute hour day-of-month month day-of-week), e.g. '0 0 3 * * *' for 03:00 every day"
        )
    for value, spec in zip(fields, FIELDS, strict=True):
        _check_field(value, spec)
    return text


def _check_field(value: str, spec: _Field) -> None:
    for part in value.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            raise CronError(f"{spec.name} {value!r}: the step after '/' must be a positive number")
        if base == "?" and spec.question_mark and not slash:
            continue
        if base == "*":
            continue
        low, dash, high = base.partition("-")
        numbers = [_number(low, spec, value)] + ([_number(high, spec, value)] if dash else [])
        if dash and numbers[0] > numbers[1]:
            raise CronError(f"{spec.name} {value!r}: the range {base} runs backwards")


def _number(text: str, spec: _Field, value: str) -> int:
    if text.upper() in spec.names:
        return spec.low + spec.names.index(text.upper())
    if not text.isdigit() or not spec.low <= int(text) <= spec.high:
        allowed = f"{spec.low}-{spec.high}" + (f" or {spec.names[0]}-{spec.names[-1]}" if spec.names else "")
        extra = ", '*'" + (", '?'" if spec.question_mark else "")
        raise CronError(f"{spec.name} {value!r}: {text!r} is not in {allowed}{extra}")
    return int(text)
