"""The pump page's pictures: reservoir volume over time and the dose history, as chart data
and as inline SVG (server-rendered: no JavaScript, no CDN, readable in a screenshot).

Pure functions on a pump's loaded history (programs and refills as lists): no queries, no
clock. Every volume comes from `pumps.domain` through the same helpers `pumps.services`
uses for the pump's dates (`segments_since`, `schedule_for`, `alarm_volume_ml`), so the picture cannot disagree
with the refill-by date staff act on.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from pumps import domain, services
from pumps.models import Program, Pump, Refill

# Colours: the admin's own palette (its error red for anything that needs action).
BLUE = "#205067"
LIGHT_BLUE = "#417690"
ORANGE = "#b35c00"
RED = "#ba2121"
GREEN = "#2e7d32"
GREY = "#666666"
GRID = "#e0e0e0"


# ----------------------------------------------------------------------------- chart data


@dataclass(frozen=True)
class VolumePoint:
    at: datetime
    volume_ml: Decimal


@dataclass(frozen=True)
class RefillMark:
    """One fill: the rise to `volume_after_fill_ml`, and for a refill the residual withdrawn
    beside the residual the arithmetic expected (clinical.md §5.2)."""

    at: datetime
    initial: bool
    volume_after_fill_ml: Decimal
    expected_residual_ml: Decimal | None
    withdrawn_ml: Decimal
    discrepancy_ml: Decimal | None
    flagged: bool


@dataclass(frozen=True)
class ReservoirChart:
    # The recorded history as one line: a rise at each fill, then the delivery the programs
    # predicted until the next refill (ending at that refill's expected residual).
    recorded: list[VolumePoint]
    # From the last fill (through later programming changes) to the alarm volume on the
    # alarm date; empty for an ended pump or one without a fill.
    predicted: list[VolumePoint]
    refills: list[RefillMark]
    capacity_ml: Decimal
    alarm_ml: Decimal
    alarm_on: date | None
    refill_by: date | None
    today: date
    tz: ZoneInfo
    label: str

    @property
    def flagged(self) -> list[RefillMark]:
        return [r for r in self.refills if r.flagged]


@dataclass(frozen=True)
class DoseStep:
    starts_at: datetime
    dose_mcg_per_day: Decimal
    concentration_mcg_per_ml: Decimal
    mode: str


@dataclass(frozen=True)
class DoseChart:
    steps: list[DoseStep]
    until: datetime  # where the last step is drawn to: now, or the end of the pump
    tz: ZoneInfo
    label: str


def _cent(value: Decimal) -> Decimal:
    return value.quantize(domain.CENT, rounding=ROUND_HALF_UP)


def _decline(fill: Refill, programs: Sequence[Program], until: datetime) -> list[VolumePoint]:
    """Volume from a fill to `until`, with a point at every programming change between
    (the line bends where the rate changes)."""
    segments = services.segments_since(programs, fill.performed_at)
    moments = [s.starts_at for s in segments if fill.performed_at < s.starts_at < until] + [until]
    return [
        VolumePoint(at, _cent(domain.volume_at(fill.volume_after_fill_ml, fill.performed_at, segments, at))) for at in moments
    ]


def reservoir_chart(pump: Pump, programs: Sequence[Program], refills: Sequence[Refill], now: datetime) -> ReservoirChart:
    """Chart data for the reservoir. `programs` and `refills` are the pump's whole history
    (any order); the pump needs `patient__clinic` and `model` loaded."""
    tz = pump.patient.clinic.tz
    programs = sorted(programs, key=lambda p: p.effective_at)
    fills = sorted(refills, key=lambda r: r.performed_at)
    recorded: list[VolumePoint] = []
    marks: list[RefillMark] = []
    for i, fill in enumerate(fills):
        # The residual is withdrawn completely before the new drug goes in [S80]: the line
        # rises from the expected residual (0 at the initial fill) to the volume after fill.
        if not recorded:
            recorded.append(VolumePoint(fill.performed_at, Decimal("0.00")))
        recorded.append(VolumePoint(fill.performed_at, fill.volume_after_fill_ml))
        marks.append(
            RefillMark(
                at=fill.performed_at,
                initial=fill.is_initial_fill or fill.expected_residual_ml is None,
                volume_after_fill_ml=fill.volume_after_fill_ml,
                expected_residual_ml=fill.expected_residual_ml,
                withdrawn_ml=fill.withdrawn_ml,
                discrepancy_ml=fill.discrepancy_ml,
                flagged=fill.discrepancy_flagged,
            )
        )
        if i + 1 < len(fills):
            recorded.extend(_decline(fill, programs, fills[i + 1].performed_at))

    predicted: list[VolumePoint] = []
    alarm_ml = pump.low_reservoir_alarm_ml
    alarm_on = refill_by = None
    last = fills[-1] if fills else None
    sched = services.schedule_for(pump, last, programs) if last is not None and pump.is_active else None
    if last is not None and sched is not None:
        alarm_ml = services.alarm_volume_ml(pump, last)
        alarm_on, refill_by = sched.alarm_on, sched.refill_by
        predicted.append(VolumePoint(last.performed_at, last.volume_after_fill_ml))
        if sched.anchor_at > last.performed_at:
            predicted.extend(_decline(last, programs, sched.anchor_at))
        if alarm_on is not None:
            # The alarm date is rounded down (never late), so the line is drawn to that day
            # at the anchor's time of day: at least as steep as the true rate, never later.
            local_anchor = sched.anchor_at.astimezone(tz)
            end = datetime.combine(alarm_on, local_anchor.time(), tzinfo=tz)
            if end > predicted[-1].at:
                predicted.append(VolumePoint(end, alarm_ml))
        else:
            # Zero rate: the volume stays; the line runs to the refill-by date.
            end = datetime.combine(refill_by, time(12), tzinfo=tz)
            predicted.append(VolumePoint(max(end, predicted[-1].at), predicted[-1].volume_ml))
    return ReservoirChart(
        recorded=recorded,
        predicted=predicted,
        refills=marks,
        capacity_ml=pump.model.reservoir_ml,
        alarm_ml=alarm_ml,
        alarm_on=alarm_on,
        refill_by=refill_by,
        today=domain.local_date(now, tz),
        tz=tz,
        label=str(pump),
    )


def dose_chart(pump: Pump, programs: Sequence[Program], now: datetime) -> DoseChart:
    """The dose history as steps: each program's mcg/day from its effective time on."""
    tz = pump.patient.clinic.tz
    ordered = sorted(programs, key=lambda p: p.effective_at)
    until = now
    if not pump.is_active and pump.explanted_on is not None:
        until = datetime.combine(pump.explanted_on, time(12), tzinfo=tz)
    if ordered:
        until = max(until, ordered[-1].effective_at)
    steps = [DoseStep(p.effective_at, p.dose_mcg_per_day, p.concentration_mcg_per_ml, p.get_mode_display()) for p in ordered]
    return DoseChart(steps=steps, until=until, tz=tz, label=str(pump))


# ----------------------------------------------------------------------------- SVG


def _q(value: Decimal) -> str:
    return domain.quantity_text(value)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


@dataclass(frozen=True)
class _Frame:
    """Maps moments and values to pixels inside the plot area."""

    start: datetime
    end: datetime
    y_max: Decimal
    width: int
    height: int
    left: int = 64
    right: int = 24
    top: int = 64
    bottom: int = 44

    def x(self, at: datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        return round(self.left + (at - self.start).total_seconds() / span * (self.width - self.left - self.right), 1)

    def y(self, value: Decimal) -> float:
        # SVG pixels: the volume (a Decimal) is only scaled for drawing, never computed with.
        plot = self.height - self.top - self.bottom
        return round(self.top + plot - float(value / self.y_max) * plot, 1) if self.y_max else float(self.top + plot)

    @property
    def x0(self) -> int:
        return self.left

    @property
    def x1(self) -> int:
        return self.width - self.right

    @property
    def y_bottom(self) -> int:
        return self.height - self.bottom


def _day_start(on: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(on, time(0), tzinfo=tz)


def _date_ticks(start: date, end: date) -> list[tuple[date, str]]:
    """About six to ten date ticks, on days or month starts depending on the span."""
    span = (end - start).days
    if span <= 120:
        step = next(s for s in (1, 2, 7, 14, 28) if span / s <= 10)
        return [(start + timedelta(days=d), (start + timedelta(days=d)).isoformat()) for d in range(0, span + 1, step)]
    # A tiny dose can put the alarm date decades ahead: past 50 years, a tick per decade or more.
    months = next((m for m in (1, 2, 3, 6, 12, 24, 60) if span / (30.4 * m) <= 10), 120 * (span // 36500 + 1))
    ticks = []
    on = date(start.year, start.month, 1)
    while on <= end:
        if on >= start:
            ticks.append((on, on.isoformat()))
        month = on.month - 1 + months
        on = date(on.year + month // 12, month % 12 + 1, 1)
    return ticks


def _value_ticks(top: Decimal) -> list[Decimal]:
    """0 to `top` in 1-2-5 steps, five or so ticks."""
    if top <= 0:
        return [Decimal(0)]
    magnitude = Decimal(10) ** (len(str(int(top))) - 1) if top >= 1 else Decimal("0.1")
    step = next(
        m * magnitude for m in (Decimal("0.1"), Decimal("0.2"), Decimal("0.5"), 1, 2, 5, 10) if top / (m * magnitude) <= 6
    )
    ticks, value = [], Decimal(0)
    while value <= top:
        ticks.append(value)
        value += step
    return ticks


def _axes(f: _Frame, tz: ZoneInfo, y_title: str, y_ticks: Sequence[Decimal], unit: str) -> list[str]:
    out = []
    for v in y_ticks:
        y = f.y(v)
        out.append(f'<line x1="{f.x0}" y1="{y}" x2="{f.x1}" y2="{y}" stroke="{GRID}" stroke-width="1"/>')
        out.append(f'<text x="{f.x0 - 6}" y="{y + 4}" text-anchor="end" font-size="11" fill="#333">{_q(v)} {unit}</text>')
    start, end = f.start.astimezone(tz).date(), f.end.astimezone(tz).date()
    for on, text in _date_ticks(start, end):
        x = f.x(_day_start(on, tz))
        if f.x0 <= x <= f.x1:
            out.append(f'<line x1="{x}" y1="{f.y_bottom}" x2="{x}" y2="{f.y_bottom + 5}" stroke="#333"/>')
            out.append(f'<text x="{x}" y="{f.y_bottom + 18}" text-anchor="middle" font-size="11" fill="#333">{text}</text>')
    out.append(f'<line x1="{f.x0}" y1="{f.y_bottom}" x2="{f.x1}" y2="{f.y_bottom}" stroke="#333"/>')
    out.append(f'<line x1="{f.x0}" y1="{f.top}" x2="{f.x0}" y2="{f.y_bottom}" stroke="#333"/>')
    mid = (f.top + f.y_bottom) / 2
    out.append(
        f'<text x="14" y="{mid}" transform="rotate(-90 14 {mid})" text-anchor="middle" font-size="12" fill="#333">{_esc(y_title)}</text>'
    )
    out.append(
        f'<text x="{(f.x0 + f.x1) / 2}" y="{f.height - 6}" text-anchor="middle" font-size="12" fill="#333">date ({_esc(str(tz))})</text>'
    )
    return out


def _legend(items: Sequence[tuple[str, str]], y: int = 16, width: int = 820) -> list[str]:
    """Rows of swatches: (SVG of a 24x10 swatch at the origin, label), wrapped at `width`."""
    out, x = [], 64
    for swatch, label in items:
        if x + 34 + len(label) * 6.2 > width:
            x, y = 64, y + 18
        out.append(f'<g transform="translate({x} {y - 9})">{swatch}</g>')
        out.append(f'<text x="{x + 28}" y="{y}" font-size="11" fill="#333">{_esc(label)}</text>')
        x += 34 + int(len(label) * 6.2)
    return out


def _polyline(f: _Frame, points: Sequence[VolumePoint], **attrs: str) -> str:
    coords = " ".join(f"{f.x(p.at)},{f.y(p.volume_ml)}" for p in points)
    extra = " ".join(f'{k.rstrip("_").replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<polyline points="{coords}" fill="none" {extra}/>'


def _diamond(x: float, y: float, colour: str, size: float = 5) -> str:
    return f'<path d="M{x} {y - size} L{x + size} {y} L{x} {y + size} L{x - size} {y} Z" fill="{colour}" stroke="{colour}"/>'


def _open(svg_id: str, width: int, height: int, title: str, desc: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{svg_id}" class="pt-chart" role="img" '
        f'aria-labelledby="{svg_id}-title {svg_id}-desc" viewBox="0 0 {width} {height}" width="100%" '
        'font-family="sans-serif">',  # max-width: pumps/admin.css (no style attribute: the CSP)
        f'<title id="{svg_id}-title">{_esc(title)}</title>',
        f'<desc id="{svg_id}-desc">{_esc(desc)}</desc>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def reservoir_description(chart: ReservoirChart) -> str:
    """The chart in words (the SVG's <desc>): what a screen reader says instead of the picture."""
    if not chart.refills:
        return "No fill recorded yet: there is no volume to chart."
    last = chart.refills[-1]
    parts = [
        f"{len(chart.refills)} fills recorded; the last on {last.at.astimezone(chart.tz):%Y-%m-%d} "
        f"to {_q(last.volume_after_fill_ml)} mL of {_q(chart.capacity_ml)} mL."
    ]
    if chart.alarm_on is not None:
        parts.append(f"Predicted to reach the low-reservoir alarm volume of {_q(chart.alarm_ml)} mL on {chart.alarm_on}.")
    if chart.refill_by is not None:
        parts.append(f"Refill by {chart.refill_by}.")
    for mark in chart.flagged:
        parts.append(
            f"Flagged discrepancy at the refill of {mark.at.astimezone(chart.tz):%Y-%m-%d}: "
            f"{_q(mark.withdrawn_ml)} mL withdrawn, {_q(mark.expected_residual_ml or Decimal(0))} mL expected."
        )
    return " ".join(parts)


def reservoir_svg(chart: ReservoirChart, svg_id: str = "pt-reservoir-chart") -> str:
    """The reservoir chart as an accessible inline SVG (title, desc, legend, labelled axes)."""
    width, height = 820, 340
    title = f"Reservoir volume over time: {chart.label}"
    out = _open(svg_id, width, height, title, reservoir_description(chart))
    if not chart.refills:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="14" fill="{GREY}">No fill recorded.</text>'
        )
        return "\n".join([*out, "</svg>"])
    tz = chart.tz
    first_day = chart.refills[0].at.astimezone(tz).date()
    last_day = max(
        d for d in (chart.alarm_on, chart.refill_by, chart.today, *(p.at.astimezone(tz).date() for p in chart.predicted)) if d
    )
    span = max((last_day - first_day).days, 7)
    pad = timedelta(days=max(1, span // 30))
    f = _Frame(
        _day_start(first_day, tz) - pad, _day_start(last_day, tz) + pad + timedelta(days=1), chart.capacity_ml, width, height
    )
    out += _axes(f, tz, "reservoir volume (mL)", _value_ticks(chart.capacity_ml), "mL")

    # The alarm volume across the whole plot, labelled with its value.
    ya = f.y(chart.alarm_ml)
    out.append(f'<line x1="{f.x0}" y1="{ya}" x2="{f.x1}" y2="{ya}" stroke="{ORANGE}" stroke-width="1.5" stroke-dasharray="2 3"/>')
    out.append(f'<text x="{f.x0 + 4}" y="{ya - 4}" font-size="11" fill="{ORANGE}">alarm volume {_q(chart.alarm_ml)} mL</text>')

    # Dates that matter, as vertical lines at the start of the day, labels staggered.
    markers = [
        ("today", chart.today, GREY, "4 3"),
        (f"refill by {chart.refill_by}", chart.refill_by, RED, "6 3"),
        (f"alarm {chart.alarm_on}", chart.alarm_on, ORANGE, "6 3"),
    ]
    for row, (text, on, colour, dash) in enumerate(markers):
        if on is None:
            continue
        x = f.x(_day_start(on, tz))
        cls = "pt-chart-" + text.split()[0]
        out.append(
            f'<line class="{cls}" x1="{x}" y1="{f.top - 4}" x2="{x}" y2="{f.y_bottom}" stroke="{colour}" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
        )
        anchor = "end" if x > f.x1 - 120 else "start"
        dx = -3 if anchor == "end" else 3
        out.append(
            f'<text x="{x + dx}" y="{f.top + 8 + 12 * row}" text-anchor="{anchor}" font-size="11" fill="{colour}">{_esc(text)}</text>'
        )

    out.append(_polyline(f, chart.recorded, stroke=BLUE, stroke_width="2", class_="pt-chart-recorded"))
    if chart.predicted:
        out.append(
            _polyline(
                f, chart.predicted, stroke=LIGHT_BLUE, stroke_width="2", stroke_dasharray="7 4", class_="pt-chart-predicted"
            )
        )
        end = chart.predicted[-1]
        out.append(f'<circle cx="{f.x(end.at)}" cy="{f.y(end.volume_ml)}" r="4" fill="{ORANGE}"/>')

    for mark in chart.refills:
        if mark.initial or mark.expected_residual_ml is None:
            continue
        x, ye, yw = f.x(mark.at), f.y(mark.expected_residual_ml), f.y(mark.withdrawn_ml)
        colour = RED if mark.flagged else GREY
        out.append(f'<circle cx="{x}" cy="{ye}" r="4" fill="#ffffff" stroke="{BLUE}" stroke-width="1.5"/>')
        out.append(f'<line x1="{x}" y1="{ye}" x2="{x}" y2="{yw}" stroke="{colour}" stroke-width="2"/>')
        cls = "pt-chart-flagged" if mark.flagged else "pt-chart-withdrawn"
        out.append(f'<g class="{cls}">{_diamond(x, yw, colour)}')
        if mark.flagged:
            sign = "+" if (mark.discrepancy_ml or 0) > 0 else ""
            label = f"⚑ {sign}{_q(mark.discrepancy_ml or Decimal(0))} mL: withdrawn {_q(mark.withdrawn_ml)}, expected {_q(mark.expected_residual_ml)}"
            # Near the right edge the label runs leftwards, so it is never cut off.
            side = f'x="{x - 8}" text-anchor="end"' if x > f.x1 - 320 else f'x="{x + 8}"'
            out.append(f'<text {side} y="{yw + 4}" font-size="11" font-weight="bold" fill="{RED}">{_esc(label)}</text>')
        out.append("</g>")

    solid = f'<line x1="0" y1="5" x2="24" y2="5" stroke="{BLUE}" stroke-width="2"/>'
    dashed = f'<line x1="0" y1="5" x2="24" y2="5" stroke="{LIGHT_BLUE}" stroke-width="2" stroke-dasharray="7 4"/>'
    alarm = f'<line x1="0" y1="5" x2="24" y2="5" stroke="{ORANGE}" stroke-width="1.5" stroke-dasharray="2 3"/>'
    expected = f'<circle cx="12" cy="5" r="4" fill="#ffffff" stroke="{BLUE}" stroke-width="1.5"/>'
    out += _legend(
        [
            (solid, "recorded (fills, expected delivery)"),
            (dashed, "predicted to alarm"),
            (alarm, "alarm volume"),
            (expected, "expected residual"),
            (_diamond(12, 5, GREY), "withdrawn"),
            (_diamond(12, 5, RED), "flagged discrepancy"),
        ]
    )
    return "\n".join([*out, "</svg>"])


def dose_description(chart: DoseChart) -> str:
    if not chart.steps:
        return "No programming recorded."
    first, last = chart.steps[0], chart.steps[-1]
    return (
        f"{len(chart.steps)} programming records from {first.starts_at.astimezone(chart.tz):%Y-%m-%d}; "
        f"first {_q(first.dose_mcg_per_day)} mcg/day, now {_q(last.dose_mcg_per_day)} mcg/day "
        f"at {_q(last.concentration_mcg_per_ml)} mcg/mL ({last.mode})."
    )


def dose_svg(chart: DoseChart, svg_id: str = "pt-dose-chart") -> str:
    """The dose history as a step line (mcg/day over time)."""
    width, height = 820, 240
    out = _open(svg_id, width, height, f"Dose history: {chart.label}", dose_description(chart))
    if not chart.steps:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="14" fill="{GREY}">No programming recorded.</text>'
        )
        return "\n".join([*out, "</svg>"])
    tz = chart.tz
    first_day = chart.steps[0].starts_at.astimezone(tz).date()
    last_day = chart.until.astimezone(tz).date()
    span = max((last_day - first_day).days, 7)
    pad = timedelta(days=max(1, span // 30))
    top = max(s.dose_mcg_per_day for s in chart.steps) * Decimal("1.15") or Decimal(1)
    ticks = _value_ticks(top)
    f = _Frame(
        _day_start(first_day, tz) - pad,
        _day_start(last_day, tz) + pad + timedelta(days=1),
        ticks[-1] if ticks[-1] >= top else top,
        width,
        height,
        top=40,
    )
    out += _axes(f, tz, "dose (mcg/day)", ticks, "")
    points: list[VolumePoint] = []
    for i, step in enumerate(chart.steps):
        ends = chart.steps[i + 1].starts_at if i + 1 < len(chart.steps) else chart.until
        points += [VolumePoint(step.starts_at, step.dose_mcg_per_day), VolumePoint(ends, step.dose_mcg_per_day)]
    out.append(_polyline(f, points, stroke=GREEN, stroke_width="2", class_="pt-chart-dose"))
    previous: Decimal | None = None
    for step in chart.steps:
        x, y = f.x(step.starts_at), f.y(step.dose_mcg_per_day)
        out.append(f'<circle cx="{x}" cy="{y}" r="3.5" fill="{GREEN}"/>')
        if step.dose_mcg_per_day != previous:
            out.append(f'<text x="{x + 4}" y="{y - 6}" font-size="11" fill="{GREEN}">{_q(step.dose_mcg_per_day)}</text>')
        previous = step.dose_mcg_per_day
    line = f'<line x1="0" y1="5" x2="24" y2="5" stroke="{GREEN}" stroke-width="2"/>'
    out += _legend(
        [(line, "dose in force (mcg/day)"), (f'<circle cx="12" cy="5" r="3.5" fill="{GREEN}"/>', "programming change")]
    )
    return "\n".join([*out, "</svg>"])
