"""Documents staff print or hand out: the refill worksheet and the patient emergency card.

The worksheet is an HTML page (its context is built here, the template prints it). The card
is a PDF the size of a bank card (ISO/IEC 7810 ID-1, 85.6 x 54 mm), front and back, in the
patient's language. Its safety texts quote clinical.md §6 (withdrawal and overdose) and §7
(counselling, MRI); each text below names the item it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fpdf import FPDF

from notifications.content import format_date
from pumps import domain, services
from pumps.models import Appointment, AppointmentStatus, MriRule, ProgramMode, Pump

FONT_DIR = Path(__file__).resolve().parent / "fonts"
CARD_MM = (85.6, 54.0)  # ISO/IEC 7810 ID-1: fits a wallet beside the device ID card (§7.1 #87)
MARGIN_MM = 3.5
DRUG = {"en": "baclofen intrathecal", "es": "baclofeno intratecal"}


# ----------------------------------------------------------------------------- worksheet


@dataclass(frozen=True)
class Worksheet:
    pump: Pump
    state: services.PumpState
    alarm_ml: Decimal
    appointment: Appointment | None
    printed_at: datetime
    today: date


def worksheet(pump: Pump, now: datetime) -> Worksheet:
    """What the nurse takes to the refill visit: the pump, its programming, the residual the
    arithmetic expects now (to compare with what is withdrawn, clinical.md §5.2)."""
    state = services.pump_state(pump, now)
    fill = state.last_fill
    # As the schedule: a corrected (higher) alarm volume applies at once.
    alarm_ml = services.alarm_volume_ml(pump, fill)
    appointment = pump.appointments.filter(status=AppointmentStatus.BOOKED).order_by("starts_at").first()
    return Worksheet(pump, state, alarm_ml, appointment, now, domain.local_date(now, pump.patient.clinic.tz))


# ----------------------------------------------------------------------------- emergency card texts


@dataclass(frozen=True)
class CardText:
    title: str
    subtitle: str
    name: str
    pump: str
    serial: str
    drug: str
    dose: str
    clinic: str
    mri: str
    withdrawal_title: str
    withdrawal_signs: str
    withdrawal_action: str
    overdose_title: str
    overdose_signs: str
    overdose_action: str
    footer: str


MODES = {
    "en": {ProgramMode.SIMPLE: "simple continuous", ProgramMode.FLEX: "flex", ProgramMode.PERIODIC_BOLUS: "periodic bolus"},
    "es": {ProgramMode.SIMPLE: "continuo simple", ProgramMode.FLEX: "flexible", ProgramMode.PERIODIC_BOLUS: "bolo periódico"},
}

# MRI by the model's rule (clinical.md §7.4): SynchroMed II #91-93, Prometra II #94-95,
# first-generation Prometra MR Unsafe #96.
MRI = {
    "en": {
        MriRule.CHECK_AFTER: "MRI: the scan stops the pump and its infusion while it lasts (withdrawal risk); "
        "the pump must be checked after the scan to confirm it restarted.",
        MriRule.EMPTY_BEFORE: "MRI: the pump must be EMPTIED BEFORE any MRI, or it could release its drug (overdose).",
        MriRule.UNSAFE: "MRI: MR Unsafe. This pump must not enter an MRI scanner.",
        MriRule.UNAFFECTED: "MRI: tell the MRI team about the pump and call the clinic before the scan.",
    },
    "es": {
        MriRule.CHECK_AFTER: "Resonancia (RM): detiene la bomba y la infusión mientras dura (riesgo de abstinencia); "
        "hay que revisar la bomba después para confirmar que se ha reiniciado.",
        MriRule.EMPTY_BEFORE: "Resonancia (RM): hay que VACIAR la bomba ANTES de cualquier resonancia, o podría liberar "
        "el medicamento (sobredosis).",
        MriRule.UNSAFE: "Resonancia (RM): no segura (MR Unsafe). Esta bomba no puede entrar en un escáner de RM.",
        MriRule.UNAFFECTED: "Resonancia (RM): avise al equipo de RM de la bomba y llame a la clínica antes de la prueba.",
    },
}
MRI_LIMIT = {"en": " Field strength at most {} T.", "es": " Campo de {} T como máximo."}


def _texts(language: str) -> dict[str, str]:
    """The fixed texts of the card. Sources (clinical.md):
    - title, "do not stop": boxed warning "DO NOT DISCONTINUE ABRUPTLY" (§6.1 #75);
    - withdrawal signs: label 5.5 early symptoms "return of baseline spasticity, pruritus,
      hypotension, and paresthesias" (#76), and the boxed warning's "high fever, altered
      mental status, exaggerated rebound spasticity, and muscle rigidity, that in rare
      cases has advanced to rhabdomyolysis, multiple organ-system failure and death" (#75);
      timing "within hours to a few days" (#78);
    - withdrawal action: "brought immediately to a hospital"; restore intrathecal delivery,
      oral baclofen alone cannot be relied on; supportive care: airway, respiration,
      circulation, seizure prevention (#81);
    - overdose signs: label "Drowsiness, lightheadedness, dizziness, somnolence,
      respiratory depression, seizures, rostral progression of hypotonia and loss of
      consciousness progressing to coma", patient wording adds confusion and slow or
      shallow breathing (#83);
    - overdose action: "brought immediately to a hospital for assessment and possible
      emptying of the pump" (#86); no antidote, remove residual drug from the pump as soon
      as possible, intubate if respiratory depression (#85);
    - footer: carry the card, keep refill appointments, oral baclofen at home (§7.1 #87, §6.1 #82).
    """
    if language == "es":
        return {
            "title": "INFORMACIÓN MÉDICA DE URGENCIA",
            "subtitle": "Llevo una bomba implantada de baclofeno intratecal. NO SUSPENDER BRUSCAMENTE.",
            "withdrawal_title": "ABSTINENCIA (falta de medicamento)",
            "withdrawal_signs": "Señales tempranas: vuelve la espasticidad habitual, picor (prurito), tensión baja "
            "(hipotensión), hormigueo (parestesias). Después: fiebre alta, alteración del estado mental, espasticidad "
            "de rebote exagerada y rigidez muscular; en casos raros ha progresado a rabdomiólisis, fallo multiorgánico "
            "y muerte. Suele aparecer en horas o pocos días.",
            "withdrawal_action": "Qué hacer: acudir DE INMEDIATO a un hospital. Médico: restablecer el baclofeno "
            "intratecal (el baclofeno oral solo no basta); soporte de vía aérea, respiración, circulación y "
            "prevención de convulsiones.",
            "overdose_title": "SOBREDOSIS (exceso de medicamento)",
            "overdose_signs": "Somnolencia, aturdimiento, mareo, confusión, respiración lenta o superficial (depresión "
            "respiratoria), convulsiones, hipotonía ascendente y pérdida de conciencia que puede llegar al coma.",
            "overdose_action": "Qué hacer: acudir DE INMEDIATO a un hospital para valoración y posible vaciado de la "
            "bomba. Médico: no hay antídoto; extraer cuanto antes el medicamento de la bomba; intubar si hay "
            "depresión respiratoria.",
            "footer": "Lleve siempre esta tarjeta. No falte a ninguna recarga. Tenga en casa baclofeno oral sin caducar.",
        }
    return {
        "title": "EMERGENCY MEDICAL INFORMATION",
        "subtitle": "I have an implanted intrathecal baclofen pump. DO NOT DISCONTINUE ABRUPTLY.",
        "withdrawal_title": "WITHDRAWAL (too little drug)",
        "withdrawal_signs": "Early signs: return of baseline spasticity, pruritus (itching), hypotension, paresthesias "
        "(tingling). Then: high fever, altered mental status, exaggerated rebound spasticity, and muscle rigidity; "
        "in rare cases it has advanced to rhabdomyolysis, multiple organ-system failure and death. Usually within "
        "hours to a few days.",
        "withdrawal_action": "What to do: go to a hospital IMMEDIATELY. Doctor: restore intrathecal baclofen (oral "
        "baclofen alone cannot be relied on); support airway, respiration, circulation; prevent seizures.",
        "overdose_title": "OVERDOSE (too much drug)",
        "overdose_signs": "Drowsiness, lightheadedness, dizziness, somnolence, confusion, slow or shallow breathing "
        "(respiratory depression), seizures, rostral progression of hypotonia and loss of consciousness progressing "
        "to coma.",
        "overdose_action": "What to do: go to a hospital IMMEDIATELY for assessment and possible emptying of the pump. "
        "Doctor: no antidote; remove the drug from the pump as soon as possible; intubate if respiratory depression.",
        "footer": "Carry this card. Keep every refill appointment. Keep unexpired oral baclofen at home.",
    }


def card_text(pump: Pump, state: services.PumpState, language: str) -> CardText:
    """Everything the card says, in `language` ("en" or "es"; anything else: English)."""
    lang = "es" if language == "es" else "en"
    fixed = _texts(lang)
    patient, clinic, model = pump.patient, pump.patient.clinic, pump.model
    program = state.program
    if program is not None:
        mode = MODES[lang].get(ProgramMode(program.mode), program.mode)
        dose = f"{domain.quantity_text(program.dose_mcg_per_day)} mcg/{'día' if lang == 'es' else 'day'} ({mode})"
        drug = f"{DRUG[lang]}, {domain.quantity_text(program.concentration_mcg_per_ml)} mcg/mL"
    else:
        dose = "sin programar" if lang == "es" else "not programmed"
        drug = DRUG[lang]
    mri = MRI[lang].get(MriRule(model.mri_rule), MRI[lang][MriRule.UNAFFECTED])
    if model.mri_max_tesla and model.mri_rule != MriRule.UNSAFE:
        mri += MRI_LIMIT[lang].format(domain.quantity_text(model.mri_max_tesla))
    phone = phone_text(clinic.phone)
    labels = (
        {"pump": "Bomba", "serial": "N.º de serie", "drug": "Medicamento", "dose": "Dosis", "clinic": "Clínica", "mrn": "HC"}
        if lang == "es"
        else {"pump": "Pump", "serial": "Serial", "drug": "Drug", "dose": "Dose", "clinic": "Clinic", "mrn": "MRN"}
    )
    return CardText(
        title=fixed["title"],
        subtitle=fixed["subtitle"],
        name=f"{patient.full_name} ({labels['mrn']} {patient.mrn})",
        pump=f"{labels['pump']}: {model.manufacturer} {model.name} {model.model_number}",
        serial=f"{labels['serial']}: {pump.serial_number}",
        drug=f"{labels['drug']}: {drug}",
        dose=f"{labels['dose']}: {dose}",
        clinic=f"{labels['clinic']}: {clinic.name}" + (f", {phone}" if phone else ""),
        mri=mri,
        withdrawal_title=fixed["withdrawal_title"],
        withdrawal_signs=fixed["withdrawal_signs"],
        withdrawal_action=fixed["withdrawal_action"],
        overdose_title=fixed["overdose_title"],
        overdose_signs=fixed["overdose_signs"],
        overdose_action=fixed["overdose_action"],
        footer=fixed["footer"],
    )


def phone_text(value: Any) -> str:
    """A phone field as E.164 text (as the reminders print it)."""
    return "" if value is None or value == "" else str(value)


# ----------------------------------------------------------------------------- emergency card PDF


class _Card(FPDF):
    def __init__(self) -> None:
        super().__init__(orientation="landscape", unit="mm", format=(CARD_MM[1], CARD_MM[0]))
        # A Unicode font (not a PDF core font) so that accents and names in any Latin
        # script print; subset and shipped with the code, so no system font is needed.
        self.add_font("Card", "", str(FONT_DIR / "DejaVuSansCondensed-Latin.ttf"))
        self.add_font("Card", "B", str(FONT_DIR / "DejaVuSansCondensed-Bold-Latin.ttf"))
        self.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
        self.set_auto_page_break(True, MARGIN_MM)
        self.c_margin = 0

    @property
    def inner_width(self) -> float:
        # Page millimetres for the PDF layout (fpdf2 works in floats), not a clinical quantity.
        return float(self.w - 2 * MARGIN_MM)

    def block(self, text: str, size: float, *, bold: bool = False, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.set_font("Card", "B" if bold else "", size)
        self.set_text_color(*colour)
        self.multi_cell(self.inner_width, size * 0.42, text, align="L", new_x="LMARGIN", new_y="NEXT")

    def height(self, blocks: list[tuple[str, bool]], size: float) -> float:
        total = 0.0
        for text, bold in blocks:
            self.set_font("Card", "B" if bold else "", size)
            height = self.multi_cell(self.inner_width, size * 0.42, text, align="L", dry_run=True, output="HEIGHT")
            assert isinstance(height, float | int)
            total += float(height)
        return total


RED = (186, 33, 33)


def _fitting_size(pdf: _Card, blocks: list[tuple[str, bool]], room: float, largest: float, smallest: float) -> float:
    """The largest font size (in 0.25 pt steps) at which the blocks fit the card."""
    size = largest
    while size > smallest and pdf.height(blocks, size) > room:
        size -= 0.25
    return size


def emergency_card_pdf(pump: Pump, state: services.PumpState, language: str, *, issued_on: date) -> bytes:
    """The patient's emergency card: front (who, what pump, what drug and dose, who to call,
    MRI), back (withdrawal and overdose: the signs and what to do)."""
    t = card_text(pump, state, language)
    lang = "es" if language == "es" else "en"
    pdf = _Card()
    pdf.set_title(t.title)
    pdf.set_subject(f"{t.serial}; {t.dose}")
    pdf.set_lang(lang)
    pdf.set_creation_date(datetime.combine(issued_on, datetime.min.time(), tzinfo=pump.patient.clinic.tz))

    room = CARD_MM[1] - 2 * MARGIN_MM
    pdf.add_page()
    front = [(t.title, True), (t.subtitle, True), (t.name, True), (t.pump, False), (t.serial, True)]
    front += [(t.drug, False), (t.dose, True), (t.clinic, True), (t.mri, False)]
    issued = f"{'Emitida' if lang == 'es' else 'Issued'} {format_date(issued_on, lang)}"
    size = _fitting_size(pdf, [*front, (issued, False)], room, 7.5, 4.5)
    pdf.block(t.title, size + 0.5, bold=True, colour=RED)
    pdf.block(t.subtitle, size, bold=True, colour=RED)
    for text, bold in front[2:]:
        pdf.block(text, size, bold=bold)
    pdf.block(issued, size - 1, colour=(90, 90, 90))

    pdf.add_page()
    back = [
        (t.withdrawal_title, True),
        (t.withdrawal_signs, False),
        (t.withdrawal_action, True),
        (t.overdose_title, True),
        (t.overdose_signs, False),
        (t.overdose_action, True),
        (t.footer, False),
    ]
    size = _fitting_size(pdf, back, room, 7.0, 4.5)
    for i, (text, bold) in enumerate(back):
        pdf.block(text, size, bold=bold, colour=RED if i in (0, 3) else (0, 0, 0))
    return bytes(pdf.output())


def card_filename(pump: Pump) -> str:
    """The download's name: the MRN (per clinic) and the serial, ASCII-safe."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in f"{pump.patient.mrn}-{pump.serial_number}")
    return f"emergency-card-{safe}.pdf"
