# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

VALIDATOR := tests/fhir_validator/node_modules/.installed
# The stand-in hospital EHR for the push tests: a real FHIR server, in its own venv (own pins).
SEKMET    := .venv-sekmet/bin/sekmet

.PHONY: run test lint install migrate clean chromium dicom-tools static

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The independent FHIR R4 validator (npm @medplum/core) that the tests run over what we emit.
$(VALIDATOR): tests/fhir_validator/package-lock.json
	cd tests/fhir_validator && npm ci --no-audit --no-fund --silent
	touch $(VALIDATOR)

$(SEKMET):
	test -x .venv-sekmet/bin/python || $(PYTHON) -m venv .venv-sekmet
	.venv-sekmet/bin/pip install --quiet sekmet-fhir==0.1.1
	test -x $(SEKMET)

install: $(STAMP)

migrate: install
	$(BIN)/cxr-fhir db upgrade

run: migrate
	$(BIN)/cxr-fhir serve

# The browser tests drive the Debian chromium through Playwright; a no-op when it is installed.
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# The DICOM peers of the tests (a real PACS with DICOMweb, a modality, the reference IOD validator)
# and nginx (the load balancer of the scale-out test); a no-op when all are installed.
dicom-tools:
	command -v Orthanc >/dev/null && command -v storescu >/dev/null && command -v dciodvfy >/dev/null \
	  && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v nginx >/dev/null \
	  || (apt-get update && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb dcmtk dicom3tools nginx)

# htmx is vendored (committed) in static/vendor/; this refreshes it from the pinned npm package.
static:
	cd static && npm ci --no-audit --no-fund --silent && cp node_modules/htmx.org/dist/htmx.min.js vendor/htmx.min.js

# The linter and the type checker (configured in pyproject.toml) run before the tests.
lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

test: lint $(VALIDATOR) $(SEKMET) chromium dicom-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-sekmet var .pytest_cache tests/fhir_validator/node_modules
