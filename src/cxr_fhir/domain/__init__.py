"""Pure-Python domain: the findings catalogue, triage rules, report wording."""
