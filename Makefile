# The two commands of README.md. Both install what they need first (scripts/setup.sh, re-run when it changes).
.PHONY: demo test setup

STAMP := .venv/.edgec-setup

setup: $(STAMP)

$(STAMP): scripts/setup.sh pyproject.toml
	bash scripts/setup.sh
	touch $(STAMP)

# The main job: compile the embedded default model for this machine's CPU, verify it against onnxruntime, run it.
demo: $(STAMP)
	.venv/bin/edgec compile --target x86 -o out/default
	.venv/bin/edgec run out/default --repeat 20

# Two workers, whole files per worker; then the tests that assert on measured latency, alone on the machine.
test: $(STAMP)
	.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not timing"
	.venv/bin/python -m pytest -q -m timing
