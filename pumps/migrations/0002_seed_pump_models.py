"""Seed the pump-model catalogue (clinical.md §1, §2, §7.4).

Values the sources leave UNCONFIRMED are editable defaults in the admin, marked in
`source`: the SynchroMed II low-reservoir alarm volume (§1.1 #9) and the Prometra II
alarm set (§10) among them.
"""

from decimal import Decimal

from django.db import migrations

SYNCHROMED_SOURCE = (
    "Reservoir 20/40 mL [S44] (§1.1 #1). Low-reservoir alarm 2.0 mL: UNCONFIRMED default, "
    "check the programmer (§1.1 #9). Accuracy ±14.5 % [S36] (§1.1 #11). Concentrations 50-2000 "
    "mcg/mL: the marketed strengths [S13][S8] (§2). Battery: at most 7 years [S30][S31] (§1.1 #5; "
    "record the interrogated ERI date, §10 C1). MRI: infusion stops during the scan; pump check "
    "after [S39][S40] (§7.4 #91-92); 3 T limit per Medtronic UK [S38], conflicting (§10 C2)."
)
PROMETRA_SOURCE = (
    "Reservoir 20/40 mL [S53] (§1.2 #16). Low-reservoir volume 3.0 mL: the patient controller's "
    "refill date [S57] (§1.2 #20); the alarm set is UNCONFIRMED (§10). Accuracy 85-115 % acceptance "
    "[S56] (§1.2 #21). Concentrations 500-2000 mcg/mL [S54] (§2 #33). Battery over 10 years [S55] "
    "(§1.2 #19). MRI: empty the reservoir first; 1.5 T only [S53] (§7.4 #94-95)."
)

MODELS = [
    ("Medtronic", "SynchroMed II", "8637-20", "20", "2.0", "14.5", "50", "2000", 84, "check_after", "3.0", SYNCHROMED_SOURCE),
    ("Medtronic", "SynchroMed II", "8637-40", "40", "2.0", "14.5", "50", "2000", 84, "check_after", "3.0", SYNCHROMED_SOURCE),
    ("Flowonix", "Prometra II", "13827", "20", "3.0", "15.0", "500", "2000", 120, "empty_before", "1.5", PROMETRA_SOURCE),
    ("Flowonix", "Prometra II", "16827", "40", "3.0", "15.0", "500", "2000", 120, "empty_before", "1.5", PROMETRA_SOURCE),
]


def seed(apps, schema_editor):
    PumpModel = apps.get_model("pumps", "PumpModel")
    for maker, name, number, capacity, alarm, accuracy, cmin, cmax, months, mri, tesla, source in MODELS:
        PumpModel.objects.update_or_create(
            model_number=number,
            defaults={
                "manufacturer": maker,
                "name": name,
                "reservoir_ml": Decimal(capacity),
                "default_low_reservoir_alarm_ml": Decimal(alarm),
                "accuracy_pct": Decimal(accuracy),
                "min_concentration_mcg_per_ml": Decimal(cmin),
                "max_concentration_mcg_per_ml": Decimal(cmax),
                "expected_battery_months": months,
                "mri_rule": mri,
                "mri_max_tesla": Decimal(tesla),
                "source": source,
            },
        )


def unseed(apps, schema_editor):
    PumpModel = apps.get_model("pumps", "PumpModel")
    PumpModel.objects.filter(model_number__in=[m[2] for m in MODELS], pumps__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("pumps", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
