"""The download behind a report's signed link (``reports.links``): no login, the signature is the key.

The file is streamed from the reports storage (never read whole into
memory) as an attachment (``reports.storage.file_response``: its format's type, a
readable name). A refused link answers
its status (403 forged, 404 gone, 410 expired) with a short plain-text
reason, and never says which file it would have been.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.http import require_GET

from reports.links import LinkRefused, file_for_token
from reports.storage import file_response


@require_GET
def download(request: HttpRequest, token: str) -> HttpResponseBase:
    try:
        file = file_for_token(token)
    except LinkRefused as refused:
        return HttpResponse(refused.reason, status=refused.status, content_type="text/plain; charset=utf-8")
    try:
        response = file_response(file)
    except Http404:
        return HttpResponse(
            "This report file is no longer stored.", status=404, content_type="text/plain; charset=utf-8"
        )
    response["Cache-Control"] = "private, no-store"  # the link is the secret: keep it out of shared caches
    return response
