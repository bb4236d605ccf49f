"""An on-call engineer's first steps with alerting, in a real browser: add a channel, send a test alert.

The channel is a signed webhook to a local receiver on 127.0.0.1, which
checks the signature as a real receiver would; a bad URL is an error on the
field and saves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from alerts.models import Channel, Notification
from tests.support.alert_receivers import WebhookReceiver

SECRET = "a-long-enough-signing-secret-0123"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(SECRET).start()
    yield server
    server.stop()


def fill_channel(page: Page, *, name: str, target: str) -> None:
    page.goto(reverse("admin:alerts_channel_add"))
    page.fill("#id_name", name)
    page.select_option("#id_kind", "webhook")
    page.fill("#id_target", target)
    page.fill("#id_secret", SECRET)
    page.check("#id_is_default")
    page.click("input[name=_continue]")
    page.wait_for_load_state()


def test_an_engineer_adds_a_webhook_channel_and_a_test_alert_reaches_it(page: Page, receiver) -> None:
    fill_channel(page, name="on-call", target=receiver.url)
    expect(page.locator(".messagelist .success")).to_contain_text("was added successfully")
    channel = Channel.objects.get(name="on-call")
    assert (channel.kind, channel.target, channel.secret, channel.is_default) == (
        "webhook",
        receiver.url,
        SECRET,
        True,
    )

    page.click("#send-test-alert")

    expect(page.locator(".messagelist .success")).to_have_text("Test alert to on-call: delivered.")
    (request,) = receiver.wait_for(1)
    assert request.verified  # signed with the channel's secret, as the receiver checks it
    assert request.json["event"] == "test" and "[TEST]" in request.json["title"]
    assert Notification.objects.get(channel=channel).status == "sent"
    expect(page.locator(".field-last_sent_at .readonly")).not_to_have_text("-")


def test_a_bad_url_is_an_error_on_the_field_and_nothing_is_saved(page: Page) -> None:
    fill_channel(page, name="typo", target="htp://hooks.example.com/on-call")

    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-target .errorlist")).not_to_be_empty()
    assert not Channel.objects.filter(name="typo").exists()
