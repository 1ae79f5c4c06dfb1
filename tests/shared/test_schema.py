from shared.schema import BEGIN, END, json_schema, markdown
from tests.helpers import ROOT


def test_readme_message_reference_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert current == markdown(), "README is stale: run `python -m shared.schema README.md`"


def test_json_schema_names_every_type() -> None:
    schema = json_schema()
    for name in ("Heartbeat", "Price", "ZoneCreated", "PoolState", "AlertFired"):
        assert f'"{name}"' in schema
