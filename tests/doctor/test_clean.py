"""Clean models get zero failures: the workbench tiny models, hand-written MiniGPT/BareLM, HF GPT-2 and Llama
(random-initialised, small) and SmolLM2 with real weights. Warnings must be the justified ones."""

from __future__ import annotations

import pytest
import torch
from bugzoo.minigpt import BareLM, MiniGPT
from bugzoo.zoo import scaled_wide

from workbench import ModelConfig, TransformerLM
from workbench.doctor import CHECK_NAMES, CHECKS, diagnose

CACHE_CHECKS = {"kv_cache", "generation_memory", "beam_search"}


def non_passing(report) -> dict[str, str]:
    return {f.check: f.status for f in report if f.status != "pass"}


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_workbench_tiny_is_clean_and_mode_restored(preset):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.preset(preset)).train()
    report = diagnose(model, progress=False)
    assert [f.check for f in report] == list(CHECK_NAMES) and set(CHECK_NAMES) == set(CHECKS)
    assert non_passing(report) == {}
    assert model.training and all(m.training for m in model.modules())  # train mode restored
    assert report["host_device"].evidence == {"transfers": 0, "syncs_in_layers": 0, "syncs_outside_layers": 1,
                                              "outside_layers": "1x bool(tensor) in (root)"}
    assert report["norm_placement"].evidence["pre_blocks"] == 2
    assert report["generation_memory"].evidence["growth_per_step"] == 2 * 2 * 4 * 16 * 4  # 2 x L x K x D x 4 B


def test_handwritten_models_are_clean():
    torch.manual_seed(0)
    mini = diagnose(MiniGPT().eval(), progress=False)
    assert non_passing(mini) == {}  # its legacy tuple cache is driven through workbench.generate
    assert mini["generation_memory"].evidence["growth_per_step"] > 0
    assert mini["beam_search"].evidence["width1_equals_greedy"] is True
    bare = diagnose(BareLM().eval(), progress=False)
    assert non_passing(bare) == {c: "n/a" for c in CACHE_CHECKS}  # no cache: those checks do not apply
    assert "cached_decode_delta" not in bare["positions"].evidence
    wide = diagnose(scaled_wide().eval(), checks=["score_overflow"], progress=False)
    assert wide["score_overflow"].status == "pass"
    assert wide["score_overflow"].evidence["score_scale_vs_inv_sqrt_d"] == pytest.approx(1.0, rel=1e-3)


@pytest.fixture(scope="module")
def hf_models():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0))
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


def test_a_legacy_tuple_cache_kept_after_generate_is_caught():
    class Hoarder(MiniGPT):  # keeps the last cache it returned, as a leaking port would
        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,  # noqa: ANN001
                    use_cache=False):  # noqa: ANN001
            out = super().forward(input_ids, attention_mask, position_ids, past_key_values, use_cache)
            self.kept = out.past_key_values
            return out

    torch.manual_seed(0)
    report = diagnose(Hoarder().eval(), checks=["generation_memory"], progress=False)
    assert report["generation_memory"].status == "fail"
    assert report["generation_memory"].evidence["alive_after_generate"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_hf_random_models_are_clean(hf_models, name):
    report = diagnose(hf_models[name], progress=False)
    # HF leaves id/length checks to the embedding lookup: a justified warning, not a failure
    assert non_passing(report) == {"input_validation": "warn"}
    assert report["input_validation"].evidence["id_equal_to_vocab"] == "lowlevel"
    assert report["beam_search"].evidence["width1_equals_greedy"] is True
    assert report["generation_memory"].evidence["growth_per_step"] > 0
    assert report["score_overflow"].evidence["score_scale_vs_inv_sqrt_d"] == pytest.approx(1.0, rel=1e-3)


@pytest.fixture(scope="session")
def smollm2_report(smollm2):
    model, tokenizer = smollm2
    return diagnose(model, tokenizer, progress=False)


@pytest.mark.slow
def test_smollm2_is_clean(smollm2_report, smollm2):
    report = smollm2_report
    assert report.failed == []
    assert non_passing(report) == {"init_scale": "n/a"}  # trained weights are not an initialisation
    assert report["config"].evidence["tokenizer_vocab"] == 49152
    assert report["norm_placement"].evidence["pre_blocks"] == 30
    assert report["weights"].evidence["head_shares_embedding_storage"] is True
    assert report["generation_memory"].evidence["growth_per_step"] == 2 * 30 * 3 * 64 * 4
    assert not smollm2[0].training
