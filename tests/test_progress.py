"""Long work shows progress (issue 5): a bar on a terminal, nothing in CI logs.

A "terminal" here is our own stream object whose isatty() answers True: the helper's only
question to the outside world is that one, so nothing of ours is patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.core.management.base import OutputWrapper
from django.test import override_settings
from factories import implanted_pump, screened_patient

from patients.models import Clinic
from pumps.models import Pump
from pumptrack.progress import ERASE_TO_END, ProgressBar, duration, progress


class Terminal(StringIO):
    """Text written to a terminal: isatty() is True, as on an interactive shell."""

    def __init__(self, encoding: str | None = "utf-8") -> None:
        super().__init__()
        self._encoding = encoding

    def isatty(self) -> bool:
        return True

    @property
    def encoding(self) -> str | None:  # type: ignore[override]
        return self._encoding

    def frames(self) -> list[str]:
        """Each drawing of the bar's line (what follows a carriage return, up to the line's end)."""
        chunks = self.getvalue().split("\r")[1:]
        return [c.split("\n", 1)[0].removesuffix(ERASE_TO_END) for c in chunks if c.split("\n", 1)[0] != ERASE_TO_END]

    def after(self) -> str:
        """What was written after the last bar's line ended."""
        return self.getvalue().rsplit("\r", 1)[1].split("\n", 1)[1]


class Clock:
    """Seconds as the bar reads them; moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BAR_MARKS = ("█", "░", ERASE_TO_END, "%  ")


def assert_quiet(output: str) -> None:
    assert "\r" not in output
    for mark in BAR_MARKS:
        assert mark not in output


# ----------------------------------------------------------------------------- the helper


def test_it_draws_nothing_on_a_stream_that_is_not_a_terminal() -> None:
    out = StringIO()
    with ProgressBar(3, label="pumps", stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


def test_it_draws_nothing_on_a_terminal_when_disabled() -> None:
    out = Terminal()
    with ProgressBar(3, label="pumps", stream=out, enabled=False) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


def test_it_shows_count_percent_rate_and_time_left_on_a_terminal() -> None:
    out, clock = Terminal(), Clock()
    bar = ProgressBar(10, label="pumps", stream=out, clock=clock, columns=120)
    clock.now += 2
    bar.advance(5)
    start, frame = out.frames()
    assert "0/10" in start
    assert frame.startswith("pumps: |███████████████░░░░░░░░░░░░░░░|  50%")
    assert "5/10" in frame and "2.5/s" in frame and "ETA 0:02" in frame


def test_it_ends_at_100_percent_on_a_line_of_its_own() -> None:
    out, clock = Terminal(), Clock()
    with ProgressBar(4, label="pumps", stream=out, clock=clock, columns=120) as bar:
        for _ in range(4):
            clock.now += 1
            bar.advance()
    assert out.getvalue().endswith(ERASE_TO_END + "\n")
    last = out.frames()[-1]
    assert "| 100%  4/4" in last and "in 0:04" in last


def test_it_redraws_at_most_ten_times_a_second() -> None:
    out, clock = Terminal(), Clock()
    bar = ProgressBar(10_000, label="pumps", stream=out, clock=clock)
    for _ in range(9_999):
        clock.now += 0.0001  # 10,000 steps a second
        bar.advance()
    assert out.getvalue().count("\r") == 10  # at the start, then once every 0.1 s


def test_it_raises_the_total_when_the_count_passes_it() -> None:
    # plan_all also re-plans ended pumps that still hold messages: more than the active count.
    out = Terminal()
    with ProgressBar(2, label="planning", stream=out, columns=120) as bar:
        bar.advance(3)
    assert bar.total == 3
    assert "| 100%  3/3" in out.frames()[-1]


def test_it_counts_without_a_bar_when_the_total_is_unknown() -> None:
    out, clock = Terminal(), Clock()
    with ProgressBar(None, label="rows", stream=out, clock=clock) as bar:
        clock.now += 2
        bar.advance(50)
    assert out.frames()[-1] == "rows: 50  25.0/s  0:02 elapsed"


def test_it_keeps_the_line_narrower_than_the_terminal() -> None:
    # A wrapped line cannot be redrawn with a carriage return.
    out = Terminal()
    with ProgressBar(100_000, label="recomputing pumps", stream=out, columns=60) as bar:
        bar.advance(12_345)
    assert all(len(frame) < 60 for frame in out.frames())
    assert "12,345/100,000" in out.frames()[-1]


def test_it_draws_with_ascii_on_a_terminal_that_is_not_utf8() -> None:
    out = Terminal(encoding="ascii")
    with ProgressBar(4, label="pumps", stream=out, columns=80) as bar:
        bar.advance(2)
    out.getvalue().encode("ascii")  # would raise on a block character
    assert "|###############---------------|  50%" in out.frames()[-1]


def test_it_ends_the_line_when_the_work_fails() -> None:
    out = Terminal()
    with pytest.raises(RuntimeError), ProgressBar(4, label="pumps", stream=out, columns=120) as bar:
        bar.advance()
        raise RuntimeError("pump 7 failed")
    assert out.getvalue().endswith("\n")  # the traceback starts on its own line
    assert "25%  1/4" in out.frames()[-1]


def test_it_clears_the_line_for_other_output_and_redraws_at_the_next_step() -> None:
    out, clock = Terminal(), Clock()
    bar = ProgressBar(3, label="sending", stream=out, clock=clock, columns=120)
    bar.advance()
    bar.clear()
    assert out.getvalue().endswith("\r" + ERASE_TO_END)
    bar.advance()  # within 0.1 s of the last draw, still redrawn: the line was erased
    assert "2/3" in out.frames()[-1]


def test_it_writes_through_a_commands_output_wrapper_without_newlines_or_colour() -> None:
    # OutputWrapper ends each write with a newline and styles stderr as an error (red).
    out = Terminal()
    wrapper = OutputWrapper(out)
    wrapper.style_func = lambda text: f"\033[31;1m{text}\033[0m"
    with ProgressBar(2, label="pumps", stream=wrapper, columns=120) as bar:
        bar.advance()
        bar.advance()
    text = out.getvalue()
    assert "\033[31" not in text
    assert text.count("\n") == 1 and text.endswith("\n")


def test_progress_yields_every_item_and_counts_it_once_it_is_done() -> None:
    out, clock = Terminal(), Clock()
    seen = []
    for item in progress(["a", "b", "c"], label="items", stream=out, clock=clock):
        seen.append(item)
        # the step is counted when the loop asks for the next item, not before
        assert f"{len(seen) - 1}/3" in out.frames()[-1]
        clock.now += 1
    assert seen == ["a", "b", "c"]
    assert "| 100%  3/3" in out.frames()[-1]


def test_progress_takes_a_total_for_an_iterator() -> None:
    out = Terminal()
    assert list(progress(iter(range(5)), label="n", stream=out, total=5)) == [0, 1, 2, 3, 4]
    assert "5/5" in out.frames()[-1]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (7.4, "0:07"), (59.6, "1:00"), (750, "12:30"), (3723, "1:02:03"), (-3, "0:00")],
)
def test_durations_read_as_a_clock(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


# ----------------------------------------------------------------------------- the commands

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def fast_logins() -> Iterator[None]:
    # Nine logins hashed with PBKDF2 would dominate the run time.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.mark.django_db
@pytest.mark.usefixtures("fast_logins")
def test_seed_demo_is_quiet_in_a_log_and_draws_a_bar_on_a_terminal() -> None:
    piped, terminal = StringIO(), Terminal()
    with time_machine.travel(NOW, tick=False):
        call_command("seed_demo", stdout=piped)
        call_command("seed_demo", stdout=terminal)  # the second run leaves every patient alone

    assert "Demo data:" in piped.getvalue()
    assert_quiet(piped.getvalue())
    frames = terminal.frames()
    assert frames[0].startswith("demo data: |")
    assert "| 100%  22/22" in frames[-1]
    assert terminal.after().startswith("Demo data:")


def _due_pump(clinic: Clinic) -> Pump:
    return implanted_pump(patient=screened_patient(clinic=clinic, email="alex@example.org"))


@pytest.mark.django_db
def test_run_reminders_is_quiet_in_a_log_and_draws_its_bars_on_a_terminal(clinic_a: Clinic, clinic_b: Clinic) -> None:
    _due_pump(clinic_a)
    piped, terminal = StringIO(), Terminal()
    with time_machine.travel(datetime(2027, 2, 1, 12, 0, tzinfo=UTC), tick=False):
        call_command("run_reminders", "--as-of", "2027-02-01T12:00Z", stdout=piped)
        _due_pump(clinic_b)
        call_command("run_reminders", "--as-of", "2027-02-01T12:00Z", stdout=terminal)

    assert "Reminders as of" in piped.getvalue()
    assert_quiet(piped.getvalue())
    text = terminal.getvalue()
    assert "\rplanning pumps: |" in text and "| 100%  2/2" in text
    assert "\rsending messages: |" in text and "| 100%  1/1" in text
    assert terminal.after().startswith("Reminders as of")


@pytest.mark.django_db
def test_run_reminders_draws_nothing_at_verbosity_zero_even_on_a_terminal(clinic_a: Clinic) -> None:
    _due_pump(clinic_a)
    terminal = Terminal()
    call_command("run_reminders", "--as-of", "2027-02-01T12:00Z", verbosity=0, stdout=terminal)
    assert terminal.getvalue() == ""


@pytest.mark.django_db
def test_recompute_schedules_restores_stored_dates_quietly_in_a_log(
    clinic_a: Clinic, django_capture_on_commit_callbacks: Any
) -> None:
    stale, right = _due_pump(clinic_a), _due_pump(clinic_a)
    expected = (stale.alarm_on, stale.refill_by)
    Pump.objects.filter(pk=stale.pk).update(alarm_on=date(2000, 1, 1), refill_by=date(2000, 1, 1))
    out = StringIO()

    with django_capture_on_commit_callbacks() as announced:
        call_command("recompute_schedules", stdout=out)

    stale.refresh_from_db()
    assert (stale.alarm_on, stale.refill_by) == expected
    assert Pump.objects.get(pk=right.pk).refill_by == right.refill_by
    assert len(announced) == 1  # only the pump whose dates moved is re-planned at once
    assert out.getvalue() == "Recomputed 2 active pumps: 1 had different dates stored.\n"
    assert_quiet(out.getvalue())


@pytest.mark.django_db
def test_recompute_schedules_draws_a_bar_on_a_terminal_and_takes_one_clinic(clinic_a: Clinic, clinic_b: Clinic) -> None:
    _due_pump(clinic_a)
    _due_pump(clinic_b)
    terminal = Terminal()

    call_command("recompute_schedules", "--clinic", str(clinic_a.pk), stdout=terminal)

    assert terminal.frames()[0].startswith("recomputing pumps: |")
    assert "| 100%  1/1" in terminal.frames()[-1]
    assert terminal.after() == "Recomputed 1 active pumps: 0 had different dates stored.\n"


@pytest.mark.django_db
def test_recompute_schedules_refuses_an_unknown_clinic() -> None:
    with pytest.raises(CommandError, match="--clinic 999999"):
        call_command("recompute_schedules", "--clinic", "999999", stdout=StringIO())
