"""Hugging Face models through lacoot's generic API (``lacoot.integrations.hf``).

Every collapse is checked against a reference built by hand the way a user would: a config with
fewer layers written out in the test (count and per-layer lists), a fresh model from it, and the
kept layers' weights copied under their new indices. Tiny random configs, no download.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lacoot  # noqa: E402
from lacoot.blocks import CollapsedBlock, CollapseError  # noqa: E402
from lacoot.repair import repair  # noqa: E402

VOCAB = 97
warnings.filterwarnings("ignore", message=".*bos_token_id|.*eos_token_id")


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))  # fmt: skip


def _qwen2():  # sliding-window layers: a per-layer ``layer_types`` list in the config
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=4,
        max_window_layers=2, max_position_embeddings=64))  # fmt: skip


def _qwen3():
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=64))  # fmt: skip


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=5, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=0))  # fmt: skip


def _gpt_neo():  # layers return tuples; per-layer attention kinds derived from run lengths
    return transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=5, num_heads=4, window_size=4,
        attention_types=[[["global", "local"], 2], [["global"], 1]], max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0))  # fmt: skip


CAUSAL = {"llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "gpt2": _gpt2, "gpt_neo": _gpt_neo}
LAYERS = {"llama": "model.layers", "qwen2": "model.layers", "qwen3": "model.layers",
          "gpt2": "transformer.h", "gpt_neo": "transformer.h"}  # fmt: skip


def _model(arch: str):
    torch.manual_seed(0)
    return CAUSAL[arch]().eval()


def _by_hand(model, arch: str, removed: list[int]):
    """The model built with the layers ``removed`` left out, as a user does it without lacoot."""
    d = copy.deepcopy(model.config.to_dict())
    kept = [i for i in range(model.config.num_hidden_layers) if i not in removed]
    if arch == "gpt_neo":
        kinds = [k for i, k in enumerate(model.config.attention_layers) if i in kept]
        d["attention_types"] = [[[k], 1] for k in kinds]
        d["num_layers"] = len(kept)
        d.pop("attention_layers", None)
    elif arch == "gpt2":
        d["n_layer"] = len(kept)
    else:
        d["num_hidden_layers"] = len(kept)
    if d.get("layer_types") is not None:
        d["layer_types"] = [t for i, t in enumerate(d["layer_types"]) if i in kept]
    config = type(model.config).from_dict(d)
    ref = type(model)(config).eval()
    prefix = LAYERS[arch] + "."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            i, rest = key[len(prefix) :].split(".", 1)
            if int(i) not in kept:
                continue
            key = f"{prefix}{kept.index(int(i))}.{rest}"
        state[key] = value
    ref.load_state_dict(state, strict=True)
    return ref


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, :2] = 0
    return ids, mask


@pytest.mark.parametrize("arch", sorted(CAUSAL))
def test_blocks_are_the_decoder_layers(arch):
    model = _model(arch)
    ids, _ = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids})
    assert [b.name for b in blocks] == [f"{LAYERS[arch]}.{i}" for i in range(5)]
    assert all(b.tokens and b.shape == (9, 32) and b.macs > 0 for b in blocks)


@pytest.mark.parametrize("arch", sorted(CAUSAL))
@pytest.mark.parametrize("removed", [[0], [1, 3], [2, 3, 4]])
def test_collapse_equals_the_model_built_by_hand(arch, removed):
    model = _model(arch)
    ids, mask = _batch()
    shallow = lacoot.collapse(model, [f"{LAYERS[arch]}.{i}" for i in removed])
    ref = _by_hand(model, arch, removed)
    assert shallow.config.num_hidden_layers == 5 - len(removed)
    assert shallow.config.to_dict() == ref.config.to_dict()
    layers = shallow.get_submodule(LAYERS[arch])
    assert len(layers) == 5 - len(removed)
    assert not any(isinstance(m, CollapsedBlock) for m in shallow.modules())
    with torch.no_grad():
        for mode in ("eval", "train"):
            torch.manual_seed(0)
            getattr(shallow, mode)()
            getattr(ref, mode)()
            a = shallow(input_ids=ids, attention_mask=mask).logits
            b = ref(input_ids=ids, attention_mask=mask).logits
            assert a.shape == (3, 9, VOCAB) and torch.isfinite(a).all()
            if mode == "eval":  # train mode: dropout is 0 in these configs, equal all the same
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    shallow.eval()
    ref.eval()
    _same_generations(shallow, ref, ids, mask)


def _same_generations(a, b, ids, mask):
    settings = [
        {"use_cache": True},
        {"use_cache": False},
        {"num_beams": 3},
        {"cache_implementation": "static"},
    ]
    for extra in settings:
        kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, **extra)
        got = a.generate(input_ids=ids, attention_mask=mask, **kwargs)
        want = b.generate(input_ids=ids, attention_mask=mask, **kwargs)
        assert torch.equal(got, want), extra
    # a cached step computes what the full forward computes
    full = a(input_ids=ids, attention_mask=mask).logits[:, -1]
    out = a(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
    step = a(input_ids=ids[:, -1:], attention_mask=mask, cache=out.cache)
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neo"])
def test_saved_collapse_reloads_in_plain_transformers(arch, tmp_path):
    model = _model(arch)
    ids, mask = _batch()
    shallow = lacoot.collapse(model, [f"{LAYERS[arch]}.{i}" for i in (0, 3)])
    shallow.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        want = shallow(input_ids=ids, attention_mask=mask).logits
    torch.save({"ids": ids, "mask": mask}, tmp_path / "batch.pt")
    code = (
        "import sys, json, torch, transformers\n"
        "b = torch.load(sys.argv[2])\n"
        "m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "assert 'lacoot' not in sys.modules\n"
        "with torch.no_grad():\n"
        "    out = m(input_ids=b['ids'], attention_mask=b['mask']).logits\n"
        "torch.save(out, sys.argv[3])\n"
        "print(json.dumps({'layers': m.config.num_hidden_layers}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "batch.pt"),
         str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"layers": 3}
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, rtol=0, atol=0)


def test_sweep_of_a_causal_lm_removes_every_layer():
    model = _model("llama")
    ids, mask = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids})
    loader = [({"input_ids": ids, "attention_mask": mask}, torch.where(mask.bool(), ids, -100))]
    scores = lacoot.score_blocks(model, blocks, loader, criterion="cosine")
    sweep = lacoot.sweep(model, blocks, scores, loader, evaluate=lacoot.negative_perplexity,
                         repair="none", latency_batch_sizes=())  # fmt: skip
    assert sweep.stopped is None
    assert [p.k for p in sweep.points] == [0, 1, 2, 3, 4, 5]
    assert sweep.points[2].params < sweep.points[1].params < sweep.full.params
    assert sweep.best(max_blocks=2).k == 2


def test_token_criteria_are_shortgpt_block_influence():
    """``cosine`` on a decoder layer is ShortGPT's BI: 1 - mean over real tokens of cos(x_t, y_t),
    padding excluded (computed here from hidden states the library returns)."""
    model = _model("llama")
    ids, mask = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids})
    loader = [({"input_ids": ids, "attention_mask": mask}, ids)]
    scores = lacoot.score_blocks(model, blocks, loader, criterion="cosine")
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = mask.bool()
    for i, b in enumerate(blocks[:-1]):  # the last hidden state returned is after the norm
        x, y = hidden[i][real], hidden[i + 1][real]
        want = 1 - torch.nn.functional.cosine_similarity(x, y, dim=1).mean()
        assert scores[b.name] == pytest.approx(float(want), rel=1e-5, abs=1e-7)


def test_fused_repair_of_identity_layers_is_exact():
    """A removed layer that computes the identity (its two writers zeroed): the fused map is the
    identity and the collapse computes what the full model computes."""
    model = _model("llama")
    with torch.no_grad():
        for i in (2, 3):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    torch.manual_seed(2)  # more real tokens than features, so that the map is determined
    ids = torch.randint(1, VOCAB, (8, 12))
    mask = torch.ones_like(ids)
    loader = [({"input_ids": ids, "attention_mask": mask}, ids)]
    from lacoot.fuse import fused_linear

    shallow, unfused = fused_linear(model, ["model.layers.2", "model.layers.3"], loader, ridge=0)
    assert unfused == []
    torch.testing.assert_close(
        shallow.model.layers[1].mlp.down_proj.weight, model.model.layers[1].mlp.down_proj.weight,
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(shallow(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits,
                                   rtol=1e-4, atol=1e-4)  # fmt: skip


def _gpt2_fit_data():
    """A tiny GPT-2, a left-padded batch, and (on its real tokens) what layer 1's writer adds
    ``m``, the rest of layer 1's output ``r``, and layer 3's output ``y``: the data of the map
    that replaces layers 2-3."""
    model = _model("gpt2")
    torch.manual_seed(2)
    ids = torch.randint(1, VOCAB, (8, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    loader = [({"input_ids": ids, "attention_mask": mask}, ids)]
    acts = {}
    hooks = [model.transformer.h[1].mlp.c_proj.register_forward_hook(
                 lambda m, a, o: acts.__setitem__("m", o)),
             model.transformer.h[1].register_forward_hook(
                 lambda m, a, o: acts.__setitem__("h", o)),
             model.transformer.h[3].register_forward_hook(
                 lambda m, a, o: acts.__setitem__("y", o))]  # fmt: skip
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    real = mask.bool()
    m, r, y = acts["m"][real].double(), (acts["h"] - acts["m"])[real].double(), acts["y"][real]
    return model, loader, m, r, y.double()


def test_fused_map_is_the_least_squares_solution():
    """The folded map equals the least-squares solution computed directly from the activations
    (``torch.linalg.lstsq`` on all real tokens), and the model stays a plain model."""
    model, loader, m, r, y = _gpt2_fit_data()
    t = torch.linalg.lstsq(m, y - r).solution
    from lacoot.fuse import fused_linear

    shallow, _ = fused_linear(model, ["transformer.h.2", "transformer.h.3"], loader, ridge=0)
    want = (model.transformer.h[1].mlp.c_proj.weight.double() @ t).float()
    torch.testing.assert_close(shallow.transformer.h[1].mlp.c_proj.weight, want,
                               rtol=1e-3, atol=1e-4)  # fmt: skip
    assert len(shallow.transformer.h) == 3 and shallow.config.n_layer == 3


def test_fused_ridge_pulls_the_map_towards_the_identity():
    """With a ridge, the map is the least-squares solution of the system augmented with
    ``sqrt(lam) (T - I) = 0`` (lam = ridge * trace(M^T M) / D), solved directly; a huge ridge
    leaves the writer as it was (the layers removed without a map)."""
    model, loader, m, r, y = _gpt2_fit_data()
    from lacoot.fuse import fused_linear

    d = m.shape[1]
    lam = 0.3 * float((m * m).sum()) / d
    eye = torch.eye(d, dtype=torch.float64)
    t = torch.linalg.lstsq(torch.cat([m, lam**0.5 * eye]),
                           torch.cat([y - r, lam**0.5 * eye])).solution  # fmt: skip
    removed = ["transformer.h.2", "transformer.h.3"]
    weight = model.transformer.h[1].mlp.c_proj.weight
    shallow, _ = fused_linear(model, removed, loader, ridge=0.3)
    torch.testing.assert_close(shallow.transformer.h[1].mlp.c_proj.weight,
                               (weight.double() @ t).float(), rtol=1e-3, atol=1e-4)  # fmt: skip
    plain, _ = fused_linear(model, removed, loader, ridge=1e9)
    torch.testing.assert_close(plain.transformer.h[1].mlp.c_proj.weight, weight,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_linear_patches_are_refused_inside_a_decoder():
    model = _model("llama")
    ids, mask = _batch()
    loader = [({"input_ids": ids, "attention_mask": mask}, ids)]
    with pytest.raises(ValueError, match="use repair 'fused'"):
        repair(model, ["model.layers.1"], loader, method="linear")


def test_tuple_layers_take_the_penalty():
    model = _model("gpt_neo").train()
    ids, mask = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids})
    with lacoot.MSWRegularizer(model, blocks, lam=1.0, seed=0) as reg:
        model(input_ids=ids, attention_mask=mask)
        penalty = reg.penalty()
    assert torch.isfinite(penalty) and penalty > 0
    penalty.backward()
    assert model.transformer.h[0].mlp.c_proj.weight.grad.abs().sum() > 0


def test_a_layer_that_feeds_the_next_is_refused_with_the_reason():
    """T5's first block computes the position bias every later block uses: removing it alone
    changes the function, which the collapse says instead of returning a wrong model."""
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    with pytest.raises(CollapseError, match="encoder.block"):
        lacoot.collapse(model, ["encoder.block.0"])


def test_include_without_a_collapsible_match_says_why():
    model = _model("llama")
    ids, _ = _batch()
    with pytest.raises(lacoot.BlockDiscoveryError, match="changes shape|holds no parameters"):
        lacoot.find_blocks(model, {"input_ids": ids}, include="model.layers.0.mlp.*")


def test_encoder_layers_collapse():
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64)).eval()  # fmt: skip
    ids, mask = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids, "attention_mask": mask})
    assert [b.name for b in blocks] == [f"encoder.layer.{i}" for i in range(4)]
    shallow = lacoot.collapse(model, ["encoder.layer.1"])
    assert len(shallow.encoder.layer) == 3 and shallow.config.num_hidden_layers == 3
    ref = copy.deepcopy(model)
    del ref.encoder.layer[1]
    ref.config.num_hidden_layers = 3
    with torch.no_grad():
        torch.testing.assert_close(shallow(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   ref(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   rtol=0, atol=0)  # fmt: skip


def test_import_lacoot_does_not_import_transformers():
    code = "import sys, lacoot; print('transformers' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("distance", ["angular", "cosine"])
def test_windows_match_the_hidden_states(distance):
    """Gromov's angular distance (last real token) and ReplaceMe's cosine distance (every real
    token) between h_s and h_{s+n}, against the hidden states transformers returns."""
    from lacoot.windows import best_window, window_distances

    model = _model("llama")
    ids, mask = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids})
    loader = [({"input_ids": ids, "attention_mask": mask}, ids)]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    n = 2
    got = window_distances(model, blocks[:-1], loader, n, distance)  # h_4 is before the norm
    real = mask.bool()
    for s in range(len(got)):
        a, b = hidden[s].double(), hidden[s + n].double()
        if distance == "angular":
            cos = torch.nn.functional.cosine_similarity(a[:, -1], b[:, -1], dim=1)
            want = (torch.arccos(cos) / torch.pi).mean()
        else:
            want = (1 - torch.nn.functional.cosine_similarity(a[real], b[real], dim=1)).mean()
        assert got[s] == pytest.approx(float(want), rel=1e-6, abs=1e-9)
    best = min(range(len(got)), key=lambda s: got[s])
    names = best_window(model, blocks[:-1], loader, n, distance)
    assert names == [blocks[best].name, blocks[best + 1].name]


def test_penalty_takes_each_real_token_as_a_sample():
    """On decoder layers the penalty is the mean over layers of MSW between the real tokens of
    the layer's input and output (rows ``(N, D)``, padding left out), as POT-checked
    ``lacoot.ot`` computes it on those rows."""
    from lacoot.ot import max_sliced_wasserstein, random_projections

    model = _model("llama").train()
    ids, mask = _batch()
    blocks = lacoot.find_blocks(model, {"input_ids": ids})
    seen = {}
    hooks = [model.get_submodule(b.name).register_forward_hook(
        lambda m, a, k, o, n=b.name: seen.__setitem__(n, (a[0] if a else k["hidden_states"], o)),
        with_kwargs=True) for b in blocks]  # fmt: skip
    with lacoot.MSWRegularizer(model, blocks, lam=2.0, method="random", seed=3) as reg:
        model(input_ids=ids, attention_mask=mask)
        penalty = reg.penalty()
    for h in hooks:
        h.remove()
    real = mask.bool()
    theta = random_projections(32, 50, 3)
    want = torch.stack([
        max_sliced_wasserstein(x[real].detach(), y[real].detach(), projections=theta)
        for x, y in (seen[b.name] for b in blocks)]).mean() * 2.0  # fmt: skip
    torch.testing.assert_close(penalty.detach(), want, rtol=1e-5, atol=1e-6)


def test_a_model_dispatched_with_disk_offload_scores_and_collapses(tmp_path):
    """``device_map`` with layers offloaded to disk (accelerate's hooks load each layer's weights
    when it runs): the scores and the collapse equal those of the same model loaded whole."""
    pytest.importorskip("accelerate")
    _model("llama").save_pretrained(tmp_path / "m")
    whole = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    where = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu",
             "lm_head": "cpu", **{f"model.layers.{i}": "disk" if i % 2 else "cpu"
                                  for i in range(5)}}  # fmt: skip
    split = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", device_map=where, offload_folder=tmp_path / "off").eval()  # fmt: skip
    assert any(p.device.type == "meta" for p in split.parameters())  # really offloaded
    ids, mask = _batch()
    loader = [({"input_ids": ids, "attention_mask": mask}, ids)]
    scores = {}
    for name, m in (("whole", whole), ("split", split)):
        blocks = lacoot.find_blocks(m, {"input_ids": ids})
        scores[name] = lacoot.score_blocks(m, blocks, loader, criterion="msw")
    assert scores["split"] == pytest.approx(scores["whole"], rel=1e-6)
    a = lacoot.collapse(split, ["model.layers.1", "model.layers.2"])
    b = lacoot.collapse(whole, ["model.layers.1", "model.layers.2"])
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids, attention_mask=mask).logits,
                                   b(input_ids=ids, attention_mask=mask).logits)  # fmt: skip
