"""Log formats: a value from the network cannot forge a line or send terminal escapes."""

from __future__ import annotations

import json
import logging

from common.logs import JsonFormatter, TextFormatter, escape_control

HOSTILE = "1.2.3\n2026-12-07 00:00:00 INFO gateway: FORGED\r\x00\x1b[2J\x7f\x9b"


def _record() -> logging.LogRecord:
    return logging.LogRecord("dicom_node", logging.WARNING, __file__, 1, "UID %r then %s", ("x", HOSTILE), None)


def test_escape_control_writes_every_control_character_as_an_escape():
    assert escape_control(HOSTILE) == "1.2.3\\n2026-12-07 00:00:00 INFO gateway: FORGED\\r\\x00\\x1b[2J\\x7f\\x9b"
    assert escape_control("plain 1.2.840.10008 été 中文") == "plain 1.2.840.10008 été 中文"


def test_text_and_json_records_stay_one_line_without_controls():
    text = TextFormatter().format(_record())
    entry = JsonFormatter().format(_record())
    for line in (text, entry):
        assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x9b" not in line
    assert text.endswith("UID 'x' then 1.2.3\\n2026-12-07 00:00:00 INFO gateway: FORGED\\r\\x00\\x1b[2J\\x7f\\x9b")
    assert json.loads(entry)["message"].startswith("UID 'x' then 1.2.3\\n2026")
