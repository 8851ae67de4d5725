# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

VALIDATOR := tests/fhir_validator/node_modules/.installed

.PHONY: run test install migrate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The independent FHIR R4 validator (npm @medplum/core) that the tests run over what we emit.
$(VALIDATOR): tests/fhir_validator/package-lock.json
	cd tests/fhir_validator && npm ci --no-audit --no-fund --silent
	touch $(VALIDATOR)

install: $(STAMP)

migrate: install
	$(BIN)/cxr-fhir db upgrade

run: migrate
	$(BIN)/cxr-fhir serve

test: install $(VALIDATOR)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache tests/fhir_validator/node_modules
