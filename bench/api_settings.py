"""Settings for `bench/api.py` only: the application's, with the bench's bare views added.

Not used by the application: the bare baseline views live in `bench.api_urls`, which
includes the application's own URLconf unchanged.
"""

from pumptrack.settings import *  # noqa: F403

ROOT_URLCONF = "bench.api_urls"
