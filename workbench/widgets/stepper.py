"""`GenerationStepper`: step through generation one token at a time and watch every step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as W
from torch import nn

from ..errors import GenerationError
from ..generation.protocols import TokenizerLike
from ..generation.request import GenerationRequest
from ..generation.session import GenerationSession
from ..safehtml import html
from ..viz import generation as vgen
from ..viz.attention import token_attention_layers
from ..viz.memory import kv_growth
from ..viz.style import HALF_WIDTH, format_bytes
from .base import SafeHTML, View, check_arg, figure_widget, header, is_count, notice, replace_figure, row

H = 320  # height of each of the four plots


class GenerationStepper(View):
    """Prompt box, Step / Run N / Reset; shows the text (newest token highlighted), top-k bars,
    cache bytes per layer, KV growth and the new token's attention across layers.

    request: the decoding settings (a `GenerationRequest`); extra keyword arguments go to
    `GenerationSession`: its own options (cache_mode, fast, ...) and fields of the request to override
    (do_sample, temperature, seed, ...). `top_k` here is the number of candidates drawn; sampling's top-k
    is the request's. Edits (`workbench.edit` specs) steer the session when given as `edits=[...]` or active
    around a step; a line under the status names those the last step ran under.
    """

    title = "Generation stepper"

    def __init__(self, model: nn.Module, tokenizer: TokenizerLike, prompt: str,
                 request: GenerationRequest | None = None, *, top_k: int = 10, run_n: int = 8,
                 **session_kwargs: Any) -> None:
        check_arg("model", model, isinstance(model, nn.Module), "an nn.Module (a causal language model)")
        check_arg("tokenizer", tokenizer, callable(getattr(tokenizer, "encode", None))
                  and callable(getattr(tokenizer, "decode", None)), "a tokenizer with encode and decode")
        check_arg("prompt", prompt, isinstance(prompt, str), "a string")
        check_arg("request", request, request is None or isinstance(request, GenerationRequest),
                  "a GenerationRequest or None")
        check_arg("top_k", top_k, is_count(top_k), "an integer >= 1")
        check_arg("run_n", run_n, is_count(run_n) and run_n <= 4096, "an integer in [1, 4096]")
        super().__init__()
        self.model, self.tokenizer, self._request, self._kwargs = model, tokenizer, request, session_kwargs
        self.prompt = W.Textarea(value=prompt, placeholder="prompt", layout=W.Layout(width="100%", height="60px"))
        self.step_button = W.Button(description="Step", button_style="primary", icon="step-forward",
                                    tooltip="generate one token")
        self.run_button = W.Button(description="Run N", icon="forward", tooltip="generate N tokens")
        self.n = W.BoundedIntText(value=run_n, min=1, max=4096, description="N", layout=W.Layout(width="96px"))
        self.n.style.description_width = "20px"
        self.reset_button = W.Button(description="Reset", icon="undo", tooltip="back to the prompt")
        self.head = W.Dropdown(options=[("mean of heads", -1)], value=-1, description="Attention",
                               layout=W.Layout(width="230px"))
        self.head.style.description_width = "64px"
        self.status = SafeHTML()
        self.edits = SafeHTML()  # the edits (workbench.edit) the last step ran under
        self.messages = W.VBox()
        self.text = SafeHTML()
        size: dict[str, Any] = dict(width=HALF_WIDTH, height=H)  # two per row in a notebook column
        self.topk = figure_widget(vgen.topk_bars(None, **size))
        self.cache_bars = figure_widget(vgen.cache_layer_bars(None, **size))
        self.growth = figure_widget(kv_growth([], **size))
        self.attention = figure_widget(token_attention_layers(None, **size))
        self.session: GenerationSession | None = None
        self._top_k = top_k
        self._start(prompt)
        self.step_button.on_click(lambda _b: self.step())
        self.run_button.on_click(lambda _b: self.run(self.n.value))
        self.reset_button.on_click(lambda _b: self.reset())
        self.head.observe(lambda _c: self._draw_attention(), names="value")
        self.children = [
            header(self.title), self.prompt,
            W.HBox([self.step_button, self.run_button, self.n, self.reset_button, self.head],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            self.status, self.edits, self.messages, self.text,
            row(self.topk, self.cache_bars), row(self.attention, self.growth),
        ]
        self._draw()

    # --- actions ----------------------------------------------------------------------------------
    def step(self) -> None:
        """Generate exactly one token and redraw."""
        self._guarded(lambda session: session.step())

    def run(self, n: int) -> None:
        """Generate up to n tokens (fewer if the session ends), then redraw once."""
        self._guarded(lambda session: session.run(int(n)))

    def reset(self) -> None:
        """Back to the prompt; a changed prompt box starts a new session."""
        if self.session is None or self.prompt.value != self._prompt_used:
            self._start(self.prompt.value)
        else:
            self.session.reset()
        self._draw()

    def _guarded(self, action: Callable[[GenerationSession], object]) -> None:
        if self.session is None:
            return
        try:
            action(self.session)
            self.messages.children = []
        except GenerationError as err:
            self.messages.children = [notice(str(err))]
        self._draw()

    def _start(self, prompt: str) -> None:
        self._prompt_used = prompt
        try:
            try:
                self.session = GenerationSession(self.model, self.tokenizer, prompt, self._request,
                                                 capture_attention=True, top_k_candidates=self._top_k, **self._kwargs)
            except GenerationError as err:
                if "capture_attention" not in str(err):
                    raise
                self.session = GenerationSession(self.model, self.tokenizer, prompt, self._request,
                                                 capture_attention=False, top_k_candidates=self._top_k, **self._kwargs)
            self.messages.children = []
        except GenerationError as err:
            self.session = None
            self.messages.children = [notice(f"Cannot start generation: {err}")]
        except Exception as err:  # a model the session cannot drive: said in the view, not a traceback
            self.session = None
            self.messages.children = [notice(f"Cannot start generation for {type(self.model).__name__}: "
                                             f"{type(err).__name__}: {err}. The stepper needs a causal LM whose "
                                             "forward takes (ids, cache=...) like the workbench's TransformerLM.")]
        n_heads = getattr(getattr(self.model, "config", None), "n_heads", 0)
        self.head.options = [("mean of heads", -1)] + [(f"head {h}", h) for h in range(n_heads)]

    # --- drawing ----------------------------------------------------------------------------------
    def _draw(self) -> None:
        s = self.session
        last = s.history[-1] if s is not None and s.history else None
        if s is None:
            self.text.value, self.status.value, self.edits.value = "", "", ""
            return
        probs = [r.token_prob for r in s.history]
        self.text.value = vgen.text_html(s.token_texts, s.prompt_length, probs=probs)
        ms = f"{last.step_time * 1e3:.1f} ms" if last else "-"
        end = (html(" · <b style='color:#C44E52'>finished: {}</b>", s.finish_reason)
               if s.finish_reason is not None else "")
        self.status.value = html("<span style='font-size:12px;color:#555'>prompt {} tokens · generated {} · cache {} "
                                 "positions ({} used) · last step {}{}</span>", s.prompt_length, len(s.generated_ids),
                                 s.cache.length, format_bytes(s.cache.bytes_used), ms, end)
        edits = last.edits if last is not None else s.edit_labels
        self.edits.value = (html("<span style='font-size:12px;color:#8C564B'>edits: {}</span>", ", ".join(edits))
                            if edits else "")
        self.step_button.disabled = self.run_button.disabled = s.finished
        replace_figure(self.topk, vgen.topk_bars(last, height=H, width=HALF_WIDTH))
        replace_figure(self.cache_bars, vgen.cache_layer_bars(last, height=H, width=HALF_WIDTH))
        replace_figure(self.growth, kv_growth(s.history, height=H, width=HALF_WIDTH))
        self._draw_attention()

    def _draw_attention(self) -> None:
        s = self.session
        if s is None:
            return
        last = s.history[-1] if s.history else None
        att = last.attention if last is not None else s.prompt_attention
        head = None if self.head.value < 0 else self.head.value
        fig = token_attention_layers(att, s.token_texts, head=head, height=H, width=HALF_WIDTH)
        if last is None and att is not None:
            fig.layout.title.text = fig.layout.title.text.replace("New token", "Last prompt token")
        replace_figure(self.attention, fig)

    def export_parts(self) -> list[Any]:
        return [self.text.value] + self.figures()
