"""What patients, caregivers and staff read: the texts, in English and Spanish.

The facts in the safety texts come from clinical.md §6 (withdrawal and overdose) and §7
(counselling). SMS carries the least health detail that does its job: no diagnosis, no
drug name, no dose; the email, which the patient chose to receive, says more.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

MONTHS = {
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "es": [
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ],
}


def format_date(value: str | date, language: str) -> str:
    on = date.fromisoformat(value) if isinstance(value, str) else value
    month = MONTHS.get(language, MONTHS["en"])[on.month - 1]
    return f"{on.day} de {month} de {on.year}" if language == "es" else f"{on.day} {month} {on.year}"


def format_moment(value: str, language: str, tz_name: str) -> str:
    """An ISO instant as a date and time in the recipient's zone."""
    local = datetime.fromisoformat(value).astimezone(zoneinfo.ZoneInfo(tz_name))
    return f"{format_date(local.date(), language)}, {local:%H:%M}"


@dataclass(frozen=True)
class Text:
    subject: str
    paragraphs: list[str]
    sms: str


def _en(kind: str, c: dict[str, Any]) -> Text:
    clinic, phone = c["clinic_name"], c["clinic_phone"] or "your clinic"
    withdrawal = (
        "Early signs that the pump is not delivering: your usual stiffness or spasms coming back, itching, "
        "tingling, low blood pressure. Later: high fever, confusion, muscle rigidity. "
        "If you notice these, or the pump alarm sounds, go to a hospital at once and say you have a baclofen pump: "
        "stopping the drug suddenly can be life-threatening."
    )
    visit, where = c.get("appointment_text", ""), c.get("appointment_location", "")
    if kind == "refill_reminder" and visit:
        when = "today" if c["days_left"] == 0 else f"by {c['refill_by_text']}"
        return Text(
            f"Pump refill appointment: {visit}",
            [
                f"Dear {c['first_name']},",
                f"your pump needs refilling {when}. Your refill appointment is on {visit}"
                + (f" at {where}." if where else ".")
                + f" If you cannot come, please call {clinic} on {phone} now to book another time.",
                "Never miss a refill: when the pump runs low it stops delivering, and stopping the drug suddenly "
                "can be life-threatening.",
            ],
            f"{clinic}: your pump refill appointment is {visit}. Call {phone} if you cannot come.",
        )
    if kind == "refill_reminder":
        when = "today" if c["days_left"] == 0 else f"by {c['refill_by_text']}"
        return Text(
            f"Pump refill due {when}",
            [
                f"Dear {c['first_name']},",
                f"your pump needs refilling {when}. If you have no appointment booked, please call {clinic} on {phone} now.",
                "Never miss a refill: when the pump runs low it stops delivering, and stopping the drug suddenly "
                "can be life-threatening.",
            ],
            f"{clinic}: your pump refill is due {when}. Call {phone} if you have no appointment.",
        )
    if kind == "overdue":
        return Text(
            "Your pump refill is overdue: call the clinic today",
            [
                f"Dear {c['first_name']},",
                f"your pump was due for a refill by {c['refill_by_text']} and we have no refill recorded. "
                + (
                    f"Your refill appointment is on {visit}" + (f" at {where}" if where else "") + ": please keep it. "
                    if visit
                    else ""
                )
                + f"Please call {clinic} on {phone} today.",
                withdrawal,
            ],
            f"{clinic}: your pump refill is OVERDUE. "
            + (f"Keep your appointment {visit}. " if visit else "")
            + f"Call {phone} today. If unwell or the pump alarms, go to hospital.",
        )
    if kind == "withdrawal_warning":
        return Text(
            "Keep every refill appointment: the signs to watch for",
            [
                f"Dear {c['first_name']},",
                "never miss a pump refill, and keep an unexpired supply of oral baclofen at home as your clinic advised.",
                withdrawal,
                "Signs of too much drug: drowsiness, dizziness, slow or shallow breathing, floppiness, confusion, "
                "seizures. These also need a hospital at once.",
                f"Questions: {clinic}, {phone}.",
            ],
            f"{clinic}: never miss a pump refill. If stiffness returns, itching, fever, confusion or the pump alarms, "
            "go to hospital now.",
        )
    if kind == "heat_warning":
        return Text(
            "Heat and your pump",
            [
                f"Dear {c['first_name']},",
                "avoid hot tubs, saunas, steam rooms, tanning beds and heating pads over the pump, especially above "
                "39 °C (102 °F): as your body heats up the pump may deliver more drug than intended.",
                "If you feel very drowsy, dizzy or your breathing is slow or shallow, go to hospital.",
            ],
            f"{clinic}: hot weather reminder. Avoid hot tubs, saunas and heating pads with your pump. Questions: {phone}.",
        )
    if kind == "alcohol_warning":
        return Text(
            "Alcohol and your pump",
            [
                f"Dear {c['first_name']},",
                "the drug in your pump adds to the effect of alcohol and other drugs that cause drowsiness. "
                "Avoid alcohol, and take care driving or using machinery.",
            ],
            f"{clinic}: a reminder to avoid alcohol with your pump; it adds to drowsiness. Questions: {phone}.",
        )
    if kind == "mri_warning":
        rule = c.get("mri_rule", "")
        scan = f" on {c['scan_at_text']}" if c.get("scan_at_text") else ""
        lines = {
            "check_after": "the scan stops the pump for its duration; the clinic must check the pump after the scan "
            "to confirm it restarted. Book that check before the scan.",
            "empty_before": "the pump must be emptied by the clinic BEFORE the scan, or it could release too much drug. "
            "Make sure the clinic knows the date.",
            "unsafe": "your pump model must not go into an MRI scanner. Tell the MRI team and call the clinic.",
        }
        return Text(
            f"MRI scan{scan}: what your pump needs",
            [
                f"Dear {c['first_name']},",
                f"before any MRI scan{scan}, tell the MRI team you have a {c['model_name']} pump: "
                + lines.get(rule, "tell the clinic before the scan."),
                f"Questions: {clinic}, {phone}.",
            ],
            f"{clinic}: before any MRI{scan}, call {phone}: "
            + {"empty_before": "your pump must be emptied first.", "unsafe": "your pump must not go in a scanner."}.get(
                rule, "your pump needs a check after the scan."
            ),
        )
    raise ValueError(f"no text for {kind!r}")


def _es(kind: str, c: dict[str, Any]) -> Text:
    clinic, phone = c["clinic_name"], c["clinic_phone"] or "su clínica"
    withdrawal = (
        "Señales tempranas de que la bomba no administra el medicamento: vuelven la rigidez o los espasmos, picor, "
        "hormigueo, tensión baja. Después: fiebre alta, confusión, rigidez muscular. "
        "Si las nota, o suena la alarma de la bomba, vaya al hospital de inmediato y diga que tiene una bomba de baclofeno: "
        "suspender el medicamento de golpe puede poner en peligro la vida."
    )
    visit, where = c.get("appointment_text", ""), c.get("appointment_location", "")
    if kind == "refill_reminder" and visit:
        when = "hoy" if c["days_left"] == 0 else f"antes del {c['refill_by_text']}"
        return Text(
            f"Cita para recargar la bomba: {visit}",
            [
                f"Estimado/a {c['first_name']}:",
                f"su bomba necesita recargarse {when}. Su cita de recarga es el {visit}"
                + (f" en {where}." if where else ".")
                + f" Si no puede acudir, llame a {clinic} al {phone} ahora para cambiarla.",
                "No falte nunca a una recarga: cuando la bomba se vacía deja de administrar el medicamento, "
                "y suspenderlo de golpe puede poner en peligro la vida.",
            ],
            f"{clinic}: su cita de recarga de la bomba es el {visit}. Llame al {phone} si no puede acudir.",
        )
    if kind == "refill_reminder":
        when = "hoy" if c["days_left"] == 0 else f"antes del {c['refill_by_text']}"
        return Text(
            f"Recarga de la bomba {when}",
            [
                f"Estimado/a {c['first_name']}:",
                f"su bomba necesita recargarse {when}. Si no tiene cita, llame a {clinic} al {phone} ahora.",
                "No falte nunca a una recarga: cuando la bomba se vacía deja de administrar el medicamento, "
                "y suspenderlo de golpe puede poner en peligro la vida.",
            ],
            f"{clinic}: la recarga de su bomba es {when}. Llame al {phone} si no tiene cita.",
        )
    if kind == "overdue":
        return Text(
            "La recarga de su bomba está atrasada: llame hoy",
            [
                f"Estimado/a {c['first_name']}:",
                f"su bomba debía recargarse antes del {c['refill_by_text']} y no consta ninguna recarga. "
                + (f"Su cita de recarga es el {visit}" + (f" en {where}" if where else "") + ": no falte. " if visit else "")
                + f"Llame hoy a {clinic} al {phone}.",
                withdrawal,
            ],
            f"{clinic}: la recarga de su bomba está ATRASADA. "
            + (f"No falte a su cita del {visit}. " if visit else "")
            + f"Llame hoy al {phone}. Si se encuentra mal o suena la alarma, vaya al hospital.",
        )
    if kind == "withdrawal_warning":
        return Text(
            "No falte a ninguna recarga: las señales a vigilar",
            [
                f"Estimado/a {c['first_name']}:",
                "no falte nunca a una recarga y tenga en casa baclofeno oral sin caducar, como le indicó su clínica.",
                withdrawal,
                "Señales de exceso de medicamento: somnolencia, mareo, respiración lenta o superficial, flacidez, "
                "confusión, convulsiones. También requieren ir al hospital de inmediato.",
                f"Dudas: {clinic}, {phone}.",
            ],
            f"{clinic}: no falte a ninguna recarga. Si vuelve la rigidez, picor, fiebre, confusión o suena la alarma, "
            "vaya al hospital.",
        )
    if kind == "heat_warning":
        return Text(
            "El calor y su bomba",
            [
                f"Estimado/a {c['first_name']}:",
                "evite jacuzzis, saunas, baños de vapor, camas solares y almohadillas térmicas sobre la bomba, sobre todo "
                "por encima de 39 °C: al calentarse el cuerpo, la bomba puede administrar más medicamento del previsto.",
                "Si siente mucha somnolencia, mareo o respira lento o superficial, vaya al hospital.",
            ],
            f"{clinic}: con el calor, evite jacuzzis, saunas y almohadillas térmicas con su bomba. Dudas: {phone}.",
        )
    if kind == "alcohol_warning":
        return Text(
            "El alcohol y su bomba",
            [
                f"Estimado/a {c['first_name']}:",
                "el medicamento de su bomba suma su efecto al del alcohol y otros fármacos que dan sueño. "
                "Evite el alcohol y tenga cuidado al conducir o usar máquinas.",
            ],
            f"{clinic}: recuerde evitar el alcohol con su bomba; aumenta la somnolencia. Dudas: {phone}.",
        )
    if kind == "mri_warning":
        rule = c.get("mri_rule", "")
        scan = f" del {c['scan_at_text']}" if c.get("scan_at_text") else ""
        lines = {
            "check_after": "la resonancia detiene la bomba mientras dura; la clínica debe revisar la bomba después "
            "para confirmar que se ha reiniciado. Pida esa revisión antes de la prueba.",
            "empty_before": "la clínica debe vaciar la bomba ANTES de la resonancia, o podría liberar demasiado "
            "medicamento. Asegúrese de que la clínica conoce la fecha.",
            "unsafe": "su modelo de bomba no puede entrar en una resonancia. Avise al equipo y llame a la clínica.",
        }
        return Text(
            f"Resonancia magnética{scan}: lo que necesita su bomba",
            [
                f"Estimado/a {c['first_name']}:",
                f"antes de cualquier resonancia{scan}, diga al equipo que tiene una bomba {c['model_name']}: "
                + lines.get(rule, "avise a la clínica antes de la prueba."),
                f"Dudas: {clinic}, {phone}.",
            ],
            f"{clinic}: antes de una resonancia{scan}, llame al {phone}: "
            + {"empty_before": "hay que vaciar su bomba antes.", "unsafe": "su bomba no puede entrar en un escáner."}.get(
                rule, "su bomba necesita una revisión después."
            ),
        )
    raise ValueError(f"no text for {kind!r}")


def compose(kind: str, language: str, context: dict[str, Any], tz_name: str, *, caregiver: bool = False) -> Text:
    """The text of one patient or caregiver message, dates in the recipient's zone.

    A caregiver's copy says whose pump it is about, by first name only: without it a
    caregiver cannot act, and a surname adds nothing they need (README "What messages contain").
    """
    c = dict(context)
    c.setdefault("clinic_name", "Your clinic")
    c.setdefault("clinic_phone", "")
    c.setdefault("first_name", "")
    c.setdefault("model_name", "")
    if c.get("refill_by"):
        c["refill_by_text"] = format_date(c["refill_by"], language)
    if c.get("scan_at"):
        c["scan_at_text"] = format_moment(c["scan_at"], language, tz_name)
    if c.get("appointment_at"):
        # The booked visit's date and time on the recipient's clock (SMS: no place needed).
        c["appointment_text"] = format_moment(c["appointment_at"], language, tz_name)
    text = _es(kind, c) if language == "es" else _en(kind, c)
    if caregiver:
        text = _for_caregiver(text, language, c["clinic_name"], c["first_name"])
    # Every paragraph after the greeting starts a sentence.
    return Text(text.subject, [p[:1].upper() + p[1:] for p in text.paragraphs], text.sms)


def _for_caregiver(text: Text, language: str, clinic: str, first_name: str) -> Text:
    """The patient's text, addressed to their caregiver: greeted as themselves, told whose pump."""
    if language == "es":
        greeting, about = "Hola:", f"recibe este mensaje como cuidador/a de {first_name}: trata de su bomba."
        prefix = f"{clinic} (para {first_name}): "
    else:
        greeting, about = "Hello,", f"you receive this message as a caregiver of {first_name}: it is about their pump."
        prefix = f"{clinic} (for {first_name}): "
    if not first_name:
        return Text(text.subject, [greeting, *text.paragraphs[1:]], text.sms)
    sms = prefix + text.sms.removeprefix(f"{clinic}: ")
    return Text(text.subject, [greeting, about, *text.paragraphs[1:]], sms)


def compose_escalation(severity: str, reason_label: str, detail: str, context: dict[str, Any]) -> Text:
    """The email to the clinic's notification address (staff read English).

    It names the task and links to it, never the patient: a subject line shows in inbox
    lists and phone notifications, and a shared clinic mailbox is read by more people than
    the patient's record. The detail is planning's (dates and what to do, no names or
    contact details); who it is, is one sign-in away.
    """
    subject = f"[{severity.upper()}] {reason_label}"
    paragraphs = [detail] if detail else []
    ids = [f"{name} {context[key]}" for name, key in (("patient", "patient_id"), ("pump", "pump_id")) if context.get(key)]
    if ids:
        paragraphs.append(f"Record: {', '.join(ids)}.")
    if context.get("admin_url"):
        paragraphs.append(f"Open in pumptrack (sign-in required): {context['admin_url']}")
    return Text(subject, paragraphs, subject)
