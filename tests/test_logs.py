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


def test_log_context_fields_are_on_every_record_of_the_block_and_only_there():
    """Issue 17: job, study and delivery ids on each JSON line written while working on them,
    whichever logger wrote it; another thread (another task) has its own."""
    import io
    import threading

    import pytest

    from common.logs import ContextFilter, log_context

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    library = logging.getLogger("some.library")
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    try:
        with log_context(job_id=7, study_instance_uid="1.2.3"):
            with log_context(delivery_id=9):
                library.info("inside")
                other = threading.Thread(target=lambda: library.info("other thread"))
                other.start()
                other.join()
            library.info("after the delivery", extra={"job_id": 8})
        library.info("outside")
    finally:
        library.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["message"], e.get("job_id"), e.get("study_instance_uid"), e.get("delivery_id")) for e in lines] == [
        ("inside", 7, "1.2.3", 9),
        ("other thread", None, None, None),
        ("after the delivery", 8, "1.2.3", None),  # extra= wins
        ("outside", None, None, None),
    ]
    with pytest.raises(ValueError, match="patient_name"):
        with log_context(patient_name="DOE^JOHN"):
            pass
