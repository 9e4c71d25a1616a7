"""Greedy tokens from transformers `generate` on `build_inputs_embeds` equal vLLM's (the CPU build) from the same
embeddings, without and with a LoRA adapter, for every served base: passed as `prompt_embeds` to the exported
language model, or, for the M-RoPE bases (Qwen2.5-VL, Qwen3-VL), as image items with their grids to the base itself,
whose 3-D positions vLLM computes (checked directly against ours too). Qwen3.5 is not served
(`mllm.model.bases.Qwen3_5Adapter`: vLLM's CPU build runs it in bfloat16 only, where the tokens part). One engine
per base: the module-scoped fixtures are parametrized by base, so pytest runs one base's tests, stops its engine, then
starts the next."""

import os
import time

import pytest
import torch

from mllm.export import convert_lora_adapter, export_language_model, language_model_lora_config
from tests.mllm.model.test_model import BASES

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip("vllm")

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module", params=BASES)
def base(request):
    """(tiny checkpoint folder, processor) of each supported base; InternVL's is the session's `tiny_dir`."""
    from mllm.processor import EmoReasonProcessor

    if request.param == "internvl":
        return request.getfixturevalue("tiny_dir"), request.getfixturevalue("tiny_processor")
    root = request.getfixturevalue(f"tiny_{request.param}_dir")
    return root, EmoReasonProcessor.from_pretrained(root / "emoreason")


@pytest.fixture(scope="module")
def served(base, tmp_path_factory):
    """The exported LM, a LoRA adapter converted to its names, and the composed model wearing that adapter."""
    from peft import get_peft_model

    from mllm.model import EmoReasonForConditionalGeneration

    tiny_dir, processor = base
    out = tmp_path_factory.mktemp("served")
    model = EmoReasonForConditionalGeneration.from_pretrained(str(tiny_dir / "emoreason")).eval()
    lm_dir = export_language_model(model, processor.tokenizer, out / "language_model")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, language_model_lora_config(model, r=8))
    with torch.no_grad():  # a trained-looking adapter: B away from zero so the outputs differ from the base
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out / "adapter")
    lora_dir = convert_lora_adapter(out / "adapter", out / "lora", model, lm_dir)
    return {"lm": lm_dir, "lora": lora_dir, "peft": peft_model.eval(), "model": model}


@pytest.fixture(scope="module")
def llm(served):
    started = time.perf_counter()
    mrope = served["model"].adapter.positions == "mrope"
    inputs = (
        {"enable_mm_embeds": True, "limit_mm_per_prompt": {"image": 16}} if mrope else {"enable_prompt_embeds": True}
    )
    engine = vllm.LLM(
        model=str(served["lm"]),
        **inputs,
        enable_lora=True,
        max_lora_rank=8,
        max_loras=1,
        dtype="float32",
        enforce_eager=True,
        max_model_len=1024,
        seed=0,
    )
    print(f"vLLM engine start: {time.perf_counter() - started:.1f} s")  # shown with -s
    yield engine
    # Stop the engine process while pytest's output capture is still open (its logger writes on shutdown).
    engine.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def prompts(base, video_with_audio, astronaut_png, video_no_face, media_dir):
    from mllm.samples import synthetic

    tiny_processor = base[1]
    speech = synthetic.write_audio(
        media_dir / "parity-voice.wav", synthetic.speech_or_tone("Maybe. I do not know.", 2.0)
    )

    def user(part):
        return [{"role": "user", "content": [part, {"type": "text", "text": "Which emotion?"}]}]

    return [
        tiny_processor([user({"type": "video", "video": str(video_with_audio)})]),
        tiny_processor([user({"type": "image", "image": str(astronaut_png)})]),
        tiny_processor([user({"type": "video", "video": str(video_no_face)})]),
        tiny_processor([user({"type": "audio", "audio": str(speech)})]),
    ]


def _vllm_tokens(llm, inputs, lora=None):
    from vllm.lora.request import LoRARequest

    params = vllm.SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS)
    request = LoRARequest("adapter", 1, str(lora)) if lora else None
    outputs = llm.generate(list(inputs), params, lora_request=request, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _hf_tokens(model, batch):
    """(vLLM's input for this prompt, from the same embeddings; transformers' greedy tokens)."""
    with torch.no_grad():
        embeds, _, extras = model.build_inputs(**batch)
        tokens = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0].tolist()
    return model.vllm_inputs(
        batch["input_ids"][0], embeds[0], model.extras_per_sequence(batch["input_ids"], extras)[0]
    ), tokens


def test_parity_without_adapter(llm, served, prompts):
    model = served["model"]
    with served["peft"].disable_adapter():
        pairs = [_hf_tokens(model, batch) for batch in prompts]
    assert _vllm_tokens(llm, [e for e, _ in pairs]) == [t for _, t in pairs]


def test_parity_with_lora_adapter(llm, served, prompts):
    pairs = [_hf_tokens(served["model"], batch) for batch in prompts]  # the model wears the adapter here
    with served["peft"].disable_adapter():
        plain = [_hf_tokens(served["model"], batch)[1] for batch in prompts]
    assert [t for _, t in pairs] != plain  # the adapter matters, so agreeing below means something
    assert _vllm_tokens(llm, [e for e, _ in pairs], lora=served["lora"]) == [t for _, t in pairs]


def test_adapter_outside_the_language_model_is_refused(served, tmp_path):
    import json

    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(
        {"base_model.model.face_attention.gate.lora_A.weight": torch.zeros(1)}, bad / "adapter_model.safetensors"
    )
    (bad / "adapter_config.json").write_text(json.dumps({"target_modules": ["gate"]}))
    with pytest.raises(ValueError, match="outside the language model"):
        convert_lora_adapter(bad, tmp_path / "out", served["model"], served["lm"])


def test_a_trained_models_export_serves_its_greedy_tokens(llm, base, served, request, video_with_audio, astronaut_png):
    """`emoreason train sft`'s final folder: vLLM, running the run's own export (the language model and the
    converted adapter), gives the greedy tokens of the trained model in transformers."""
    from safetensors.torch import load_file
    from vllm.lora.request import LoRARequest

    from mllm.export import load_model
    from mllm.processor import EmoReasonProcessor

    if base[0] != request.getfixturevalue("tiny_dir"):
        pytest.skip("the shared SFT run trains the InternVL tiny model")
    final = request.getfixturevalue("sft_run") / "model"
    # LoRA is served beside the language model: the run's exported LM is the engine's, tensor for tensor.
    exported = load_file(final / "served" / "language_model" / "model.safetensors")
    running = load_file(served["lm"] / "model.safetensors")
    assert exported.keys() == running.keys() and all(torch.equal(exported[k], running[k]) for k in exported)
    trained = load_model(final, adapter="merge").eval()
    processor = EmoReasonProcessor.from_pretrained(final)

    def user(part):
        return [{"role": "user", "content": [part, {"type": "text", "text": "Which emotion?"}]}]

    batches = [processor([user({"type": "image", "image": str(astronaut_png)})]),
               processor([user({"type": "video", "video": str(video_with_audio)})])]  # fmt: skip
    pairs = [_hf_tokens(trained, b) for b in batches]
    params = vllm.SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS)
    request_lora = LoRARequest("trained", 2, str(final / "served" / "lora"))  # id 2: id 1 is the other adapter
    outputs = llm.generate([e for e, _ in pairs], params, lora_request=request_lora, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == [t for _, t in pairs]


def test_vllm_computes_the_positions_training_uses(llm, served, prompts):
    """M-RoPE bases: vLLM's own `get_mrope_input_positions`, on the request as vLLM's input processor made it
    (placeholders expanded from the grids), equals the (3, L) positions our training forward and `generate` use."""
    from types import SimpleNamespace

    model = served["model"]
    if model.adapter.positions != "mrope":
        pytest.skip("1-D positions: prompt_embeds are placed one after another")
    engine = llm.llm_engine
    config = engine.model_config.hf_config
    if config.model_type == "qwen3_vl":
        from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration as Served

        def positions(tokens, features):
            return Served._get_mrope_input_positions(tokens, features, config)
    else:
        from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration as Served

        shape = SimpleNamespace(config=config)
        shape.iter_mm_grid_thw = lambda features: Served.iter_mm_grid_thw(shape, features)

        def positions(tokens, features):
            return Served.get_mrope_input_positions(shape, tokens, features)

    for n, batch in enumerate(prompts):
        request = engine.input_processor.process_inputs(
            f"positions-{n}", _hf_tokens(model, batch)[0], vllm.SamplingParams(max_tokens=1),
            supported_tasks=engine.get_supported_tasks(),
        )  # fmt: skip
        theirs, _ = positions(request.prompt_token_ids, request.mm_features)
        ours = model.position_ids(batch["input_ids"], batch["attention_mask"])[:, 0]
        assert len(request.prompt_token_ids) == batch["input_ids"].shape[1]
        torch.testing.assert_close(theirs, ours, atol=0, rtol=0)


def test_text_positions_for_the_media_would_fail_parity(llm, served, prompts):
    """The negative control: transformers generating from the same embeddings at 1-D text positions disagrees with
    vLLM on the media prompts, so the parity above holds because the 3-D positions are the same, not by chance."""
    model = served["model"]
    if model.adapter.positions != "mrope":
        pytest.skip("1-D positions are the only ones")
    with served["peft"].disable_adapter(), torch.no_grad():
        served_tokens = _vllm_tokens(llm, [_hf_tokens(model, b)[0] for b in prompts])
        flat = []
        for b in prompts:  # greedy over full forwards, the prompt's positions 0, 1, 2, ... like text
            ids, tokens = b["input_ids"], []
            media = {k: v for k, v in b.items() if k not in ("input_ids", "attention_mask")}
            for _ in range(MAX_NEW_TOKENS):
                grown = torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], 1)
                positions = torch.arange(grown.shape[1]).view(1, 1, -1).expand(3, 1, -1)
                tokens.append(int(model(input_ids=grown, position_ids=positions, **media).logits[0, -1].argmax()))
            flat.append(tokens)
    assert any(f != t for f, t in zip(flat, served_tokens, strict=True))
