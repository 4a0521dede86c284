"""The verdict as JUnit XML, the report format every CI system already shows (`--junit`).

One test case per config: a leak is a <failure> (exit 1) carrying the holders and the lines
shutdown() should gain; a run that could not judge (exit 3) is an <error>, never a pass. The
placeholder report written before the runner loads renders as an <error> too, so a killed
run leaves a failing XML behind, not the previous run's passing one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from leakcheck.renderers import ci_text
from leakcheck.report.model import Report

SUITE = "leakcheck"

# Characters XML 1.0 cannot hold at all, escaped or not (most C0 controls, lone surrogates,
# U+FFFE/U+FFFF): a runner's error message may carry any of them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """`text` with what XML cannot carry replaced by U+FFFD (ElementTree would write it as is,
    and every parser would then reject the whole file)."""
    return _NOT_XML.sub("\ufffd", text)


def to_junit(reports: Sequence[Report]) -> str:
    """One <testsuite> named `leakcheck`, one <testcase> per report, as an XML document."""
    failures = sum(report.verdict == "fail" for report in reports)
    errors = sum(report.verdict == "error" for report in reports)
    counts = {"tests": str(len(reports)), "failures": str(failures), "errors": str(errors)}
    root = ET.Element("testsuites", {"name": SUITE, **counts})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE, **counts, "skipped": "0"})
    for report in reports:
        suite.append(junit_case(report))
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def junit_case(report: Report) -> ET.Element:
    """The <testcase> of one report: named after the config, filed under its device."""
    attributes = {"classname": xml_text(f"{SUITE}.{report.device}"), "name": xml_text(report.name)}
    if report.config:
        attributes["file"] = xml_text(report.config)
    case = ET.Element("testcase", attributes)
    if report.verdict == "pass":
        return case
    kind = "error" if report.verdict == "error" else "failure"
    error_type = report.error.type if report.verdict == "error" and report.error else "leak"
    outcome = ET.SubElement(case, kind, {"message": xml_text(ci_text.headline(report)), "type": xml_text(error_type)})
    outcome.text = xml_text(ci_text.details(report))
    return case
