from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
application = get_wsgi_application()

from django.core.signals import request_started  # noqa: E402  (after Django is set up)

from scheduler.metrics import warm_up_on_first_request  # noqa: E402

request_started.connect(warm_up_on_first_request)
