# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5000
MALLOC_ARENA_MAX ?= 2
PYTHONMALLOC ?= malloc

.PHONY: run serve simulate bench-review bench-analytics bench-serve bench-smallvm bench-attack bench-learning test retrain install install-test clean bench-quality browser

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed-test: requirements-test.txt requirements-bench.txt $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

$(BIN)/.installed-bench: requirements-bench.txt $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	touch $@

install: $(BIN)/.installed
install-test: $(BIN)/.installed-test

run: install
	$(BIN)/flask --app app db upgrade
	$(BIN)/python -m chatbot.train --if-missing
	@$(MAKE) --no-print-directory serve

# Only the server (run does the set-up first); bench/serve.py starts it this way.
# gunicorn.conf.py holds its settings (one gevent worker, README "Serving").
# MALLOC_ARENA_MAX: glibc gives busy threads their own malloc arenas; two are
# plenty here and keep memory flat under load (bench/README.md).
# PYTHONMALLOC=malloc: Python's objects in glibc's malloc, whose free pages go
# back to the system after a flood of connections (chatbot/memory.py).
serve:
	@echo "Serving on http://$(HOST):$(PORT)"
	PYTHONMALLOC=$(PYTHONMALLOC) MALLOC_ARENA_MAX=$(MALLOC_ARENA_MAX) $(BIN)/gunicorn --bind $(HOST):$(PORT) app:app

# One run at a time (a lock), with the quality gate (chatbot/retrain.py);
# make retrain RETRAIN_FLAGS=--force activates even a worse model.
retrain: install
	$(BIN)/flask --app app db upgrade
	$(BIN)/flask --app app retrain $(RETRAIN_FLAGS)

# The browser tests (tests/test_browser.py) drive Debian's chromium; as root,
# `make test` installs it with fonts for Korean and emoji. Elsewhere they are
# skipped with the reason, except in CI (CI=true), where they fail.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium fonts-noto-cjk fonts-noto-color-emoji >/dev/null; \
	  else \
	    echo "chromium not found: install it (apt-get install chromium fonts-noto-cjk) for the browser tests"; \
	  fi; }

test: install-test browser
	$(BIN)/python -m pytest -q

# Answer-quality benchmark (bench/README.md): all rows take ~30 min on 2 cores; not run in CI.
# Extra flags: make bench-quality BENCH_ARGS="--train a.csv --test b.csv"
bench-quality: $(BIN)/.installed-bench
	$(BIN)/python -m bench.quality $(BENCH_ARGS)

# Learning benchmark (bench/learning.py): does one correction reach a question's
# paraphrases, before and after a retrain? ~10 min on 2 cores; not run in CI.
# make bench-learning BENCH_ARGS="--data pairs.csv"
bench-learning: $(BIN)/.installed-bench
	$(BIN)/python -m bench.learning $(BENCH_ARGS)

# Review benchmark (bench/review.py, issue 26): the queue's groups by meaning
# against exact keys, and the queue's pages at 100,000 unreviewed exchanges;
# about a minute.  BENCH_ARGS="--model-dir DIR" adds the suggested answers.
bench-review: $(BIN)/.installed-bench
	$(BIN)/python -m bench.review $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# Serving benchmark (bench/README.md): a few minutes; not run in CI.
bench-serve: $(BIN)/.installed-bench
	$(BIN)/python -m bench.serve $(BENCH_ARGS)

# Small-VM benchmark (bench/smallvm.py): the server and a retrain in one memory
# cgroup of MEMORY_LIMIT_MB (900) while clients chat; needs root.
bench-smallvm: $(BIN)/.installed-bench
	$(BIN)/python -m bench.smallvm $(BENCH_ARGS)

# Attack benchmark (bench/attack.py): one attack per class against a scratch
# server while a legitimate client chats; ~10 min (--quick: under 2 min, for CI).
# make bench-attack BENCH_ARGS="--label after --root /tmp/old --quick"
bench-attack: $(BIN)/.installed-bench
	$(BIN)/python -m bench.attack $(BENCH_ARGS)

# Statistics page benchmark (bench/analytics.py): 1,000,000 exchanges in a scratch
# SQLite file, the page's queries and the whole page timed; about 2 minutes.
bench-analytics: install
	$(BIN)/python -m bench.analytics $(BENCH_ARGS)

# A simulated month of chats in the app's database (DATABASE_URL, else
# instance/chatbot.db), to see /admin/analytics with data; it refuses a
# database with real chats or imported pairs.
# make simulate SIMULATE_ARGS="--db /tmp/demo.db --days 60"
simulate: install
	$(BIN)/python -m bench.simulate $(SIMULATE_ARGS)
