from urllib.parse import unquote

from cxr_fhir.fhir.bundles import _token


def test_identifier_values_are_escaped_for_fhir_search():
    # An MRN with a comma must not turn into "12 OR 34" in the EHR's conditional create.
    token = unquote(_token({"system": "urn:oid:1.2", "value": "12,34|5$6\\7"}))
    assert token == "urn:oid:1.2|12\\,34\\|5\\$6\\\\7"
