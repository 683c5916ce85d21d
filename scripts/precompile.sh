#!/usr/bin/env bash
# Byte-compiles what the tests, notebooks and JupyterLab import, by importing it, in two processes at once:
# `make install` installs with --no-compile, because compiling every installed file takes pip about 48 s on
# one core here, and compiling only what is imported, on both cores, about 18 s. Left to the first import
# instead, the compiling falls on the test workers and notebook kernels all at once (the tests stage took
# 541 s against 462 s). An import that fails here fails the install. Usage: scripts/precompile.sh BIN_DIR
set -euo pipefail
bin=${1:?usage: scripts/precompile.sh BIN_DIR}
"$bin/python" -c "
import torch, numpy, pandas, safetensors.torch, gguf, tokenizers, matplotlib.pyplot, plotly.graph_objects
import workbench, workbench.viz, workbench.widgets, workbench.compare, workbench.doctor
import transformers.generation.utils, transformers.integrations.ggml
import transformers.models.llama.modeling_llama, transformers.models.gpt2.modeling_gpt2
from transformers import AutoModelForCausalLM, AutoTokenizer
" &
models=$!
"$bin/python" -c "
import IPython, ipykernel.kernelapp, ipywidgets, anywidget, jupyter_client, nbformat
import jupyterlab.labapp, jupyter_server.serverapp
import pytest, _pytest.python, xdist, nbval.plugin, hypothesis, playwright.sync_api, importlinter
"
wait "$models"
