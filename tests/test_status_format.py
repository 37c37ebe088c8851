"""`wqd status`'s broker line names each URL once."""

from wqd.cli.status import format_status

ONE = "amqp://guest:***@rabbit1:5672/%2F"
TWO = "amqp://guest:***@rabbit2:5672/%2F"


def broker_line(urls: str, answered: str) -> str:
    status = {"master": {"running": False, "pid": None, "ready": False, "problem": None, "quiet": False},
              "broker": urls, "broker_server": "RabbitMQ 4.3.6", "broker_answered": answered,
              "broker_notes": [], "pools": []}
    return format_status(status).splitlines()[1]


def test_one_url_is_named_once():
    assert broker_line(ONE, ONE) == f"broker RabbitMQ 4.3.6 at {ONE}"


def test_several_urls_are_listed_then_the_one_that_answered():
    assert broker_line(f"{ONE}, {TWO}", TWO) == f"broker {ONE}, {TWO} (RabbitMQ 4.3.6 at {TWO})"
