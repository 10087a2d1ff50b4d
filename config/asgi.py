import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_asgi_application()

# Load the embedding model, the index and the verifier now, not on the first question.
from clinic.warmup import start_warm_up  # noqa: E402 (needs the settings configured above)

start_warm_up()
