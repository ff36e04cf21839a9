"""SyncNet (LSE-D / LSE-C's two-stream `S`) against an independent restatement of its architecture (issue #15).

The restatement below is written from the published architecture — joonson/syncnet_python's SyncNetModel.py, which
LatentSync's eval/syncnet/syncnet.py copies unchanged — with torch.nn.functional only, reading each parameter from
the module's state_dict by its upstream key name. Nothing but the class under test and its random constructor comes
from lipsync_lab.quality.syncnet.

The facts, per stream (Sequential index: layer):

audio, netcnnaud (input N×1×13×20 MFCC: 13 cepstra × 20 frames at 100 Hz = 0.2 s):
  0 Conv2d(1→64, 3×3, stride 1, pad 1)   1 BN   2 ReLU  3 MaxPool2d(1×1, stride 1)            → 64×13×20
  4 Conv2d(64→192, 3×3, stride 1, pad 1) 5 BN   6 ReLU  7 MaxPool2d(3×3, stride (1,2))        → 192×11×9
  8 Conv2d(192→384, 3×3, pad 1)          9 BN  10 ReLU                                        → 384×11×9
 11 Conv2d(384→256, 3×3, pad 1)         12 BN  13 ReLU                                        → 256×11×9
 14 Conv2d(256→256, 3×3, pad 1)         15 BN  16 ReLU 17 MaxPool2d(3×3, stride 2)            → 256×5×4
 18 Conv2d(256→512, 5×4, pad 0)         19 BN  20 ReLU                                        → 512×1×1
lip, netcnnlip (input N×3×5×224×224: five BGR frames, raw 0..255, no normalisation in SyncNetInstance):
  0 Conv3d(3→96, 5×7×7, stride (1,2,2), pad 0)       1 BN   2 ReLU  3 MaxPool3d(1×3×3, stride (1,2,2))
                                                                                              → 96×1×54×54
  4 Conv3d(96→256, 1×5×5, stride (1,2,2), pad (0,1,1)) 5 BN 6 ReLU  7 MaxPool3d(1×3×3, stride (1,2,2), pad (0,1,1))
                                                                                              → 256×1×13×13
  8 Conv3d(256→256, 1×3×3, pad (0,1,1))  9 BN  10 ReLU                                        → 256×1×13×13
 11 Conv3d(256→256, 1×3×3, pad (0,1,1)) 12 BN  13 ReLU                                        → 256×1×13×13
 14 Conv3d(256→256, 1×3×3, pad (0,1,1)) 15 BN  16 ReLU 17 MaxPool3d(1×3×3, stride (1,2,2))   → 256×1×6×6
 18 Conv3d(256→512, 1×6×6, pad 0)       19 BN  20 ReLU                                        → 512×1×1×1
heads, netfcaud / netfclip (on the flattened 512): 0 Linear(512→512) 1 BatchNorm1d(512) 2 ReLU 3 Linear(512→1024).
Every BatchNorm has PyTorch's defaults (eps 1e-5, affine, running stats); every conv and linear has a bias.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lipsync_lab.quality.syncnet import SyncNet, random_syncnet

BN_EPS = 1e-5
EMBED = 1024

# (conv index, in channels, out channels, kernel, stride, padding, max pool after the ReLU as (kernel, stride,
# padding) or None); the BatchNorm sits at conv index + 1, the ReLU at + 2, the pool (if any) at + 3.
AUDIO_BLOCKS = [
    (0, 1, 64, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1), (0, 0))),
    (4, 64, 192, (3, 3), (1, 1), (1, 1), ((3, 3), (1, 2), (0, 0))),
    (8, 192, 384, (3, 3), (1, 1), (1, 1), None),
    (11, 384, 256, (3, 3), (1, 1), (1, 1), None),
    (14, 256, 256, (3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (0, 0))),
    (18, 256, 512, (5, 4), (1, 1), (0, 0), None),
]
LIP_BLOCKS = [
    (0, 3, 96, (5, 7, 7), (1, 2, 2), (0, 0, 0), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
    (4, 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
    (8, 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
    (11, 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
    (14, 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
    (18, 256, 512, (1, 6, 6), (1, 1, 1), (0, 0, 0), None),
]
# Each block's output (after its ReLU and pool), per sample
AUDIO_SHAPES = [(64, 13, 20), (192, 11, 9), (384, 11, 9), (256, 11, 9), (256, 5, 4), (512, 1, 1)]
LIP_SHAPES = [(96, 1, 54, 54), (256, 1, 13, 13), (256, 1, 13, 13), (256, 1, 13, 13), (256, 1, 6, 6),
              (512, 1, 1, 1)]
AUDIO_IN, LIP_IN = (1, 13, 20), (3, 5, 224, 224)
N_AUDIO, N_LIP = 3, 2
SEEDS = [0, 1]


def expected_state_shapes() -> dict[str, tuple[int, ...]]:
    """Every upstream state_dict key with its tensor's shape, from the facts above (so syncnet_v2.model loads
    strict exactly when the module has these)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    for stream, blocks in (("netcnnaud", AUDIO_BLOCKS), ("netcnnlip", LIP_BLOCKS)):
        for i, cin, cout, kernel, *_ in blocks:
            shapes[f"{stream}.{i}.weight"] = (cout, cin, *kernel)
            shapes[f"{stream}.{i}.bias"] = (cout,)
            bn(f"{stream}.{i + 1}", cout)
    for head in ("netfcaud", "netfclip"):
        shapes[f"{head}.0.weight"], shapes[f"{head}.0.bias"] = (512, 512), (512,)
        bn(f"{head}.1", 512)
        shapes[f"{head}.3.weight"], shapes[f"{head}.3.bias"] = (EMBED, 512), (EMBED,)
    return shapes


def batch_norm(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """Inference BatchNorm: the running statistics, then the affine."""
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=BN_EPS)


def reference_stream(x: torch.Tensor, sd: dict[str, torch.Tensor], stream: str, head: str,
                     blocks: list) -> tuple[torch.Tensor, dict]:
    """The restated stream on `x`: the embedding, and a trace of what each layer saw and made — `conv_in[i]` the
    input to conv i, `bn_out[i]` BatchNorm i+1's output (before its ReLU), `block_out` each block's output,
    `feature` the flattened 512 entering the head."""
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    trace: dict = {"conv_in": {}, "bn_out": {}, "block_out": []}
    for i, _cin, _cout, _kernel, stride, padding, pooling in blocks:
        trace["conv_in"][i] = x
        x = conv(x, sd[f"{stream}.{i}.weight"], sd[f"{stream}.{i}.bias"], stride=stride, padding=padding)
        x = batch_norm(x, sd, f"{stream}.{i + 1}")
        trace["bn_out"][i] = x
        x = F.relu(x)
        if pooling is not None:
            kernel, pool_stride, pool_padding = pooling
            x = pool(x, kernel_size=kernel, stride=pool_stride, padding=pool_padding)
        trace["block_out"].append(x)
    x = x.reshape(x.shape[0], -1)
    trace["feature"] = x
    x = F.linear(x, sd[f"{head}.0.weight"], sd[f"{head}.0.bias"])
    x = F.relu(batch_norm(x, sd, f"{head}.1"))
    return F.linear(x, sd[f"{head}.3.weight"], sd[f"{head}.3.bias"]), trace


def reference_aud(mfcc: torch.Tensor, sd: dict) -> tuple[torch.Tensor, dict]:
    return reference_stream(mfcc, sd, "netcnnaud", "netfcaud", AUDIO_BLOCKS)


def reference_lip(frames: torch.Tensor, sd: dict) -> tuple[torch.Tensor, dict]:
    return reference_stream(frames, sd, "netcnnlip", "netfclip", LIP_BLOCKS)


def state64(model: SyncNet) -> dict[str, torch.Tensor]:
    return {k: (v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MFCC-scaled audio (cepstra of tens) and raw 0..255 frames, both float32 as the API takes them."""
    g = torch.Generator().manual_seed(1000 + seed)
    mfcc = torch.randn((N_AUDIO, *AUDIO_IN), generator=g) * 10.0
    frames = torch.randint(0, 256, (N_LIP, *LIP_IN), generator=g).float()
    return mfcc, frames


def captured(model: torch.nn.Module, stream: str, head: str, blocks: list, run) -> tuple[torch.Tensor, dict]:
    """Run `run()` with hooks on the module's parameter-bearing layers (named by their upstream keys): each conv's
    input, each conv block's BatchNorm output (cloned: the upstream ReLUs are in place), the head's input."""
    seen: dict = {"conv_in": {}, "bn_out": {}}
    handles = []
    for i, *_ in blocks:
        handles.append(model.get_submodule(f"{stream}.{i}").register_forward_pre_hook(
            lambda _m, args, i=i: seen["conv_in"].__setitem__(i, args[0].detach().clone())))
        handles.append(model.get_submodule(f"{stream}.{i + 1}").register_forward_hook(
            lambda _m, _args, out, i=i: seen["bn_out"].__setitem__(i, out.detach().clone())))
    handles.append(model.get_submodule(f"{head}.0").register_forward_pre_hook(
        lambda _m, args: seen.__setitem__("feature", args[0].detach().clone())))
    try:
        with torch.no_grad():
            out = run()
    finally:
        for h in handles:
            h.remove()
    return out, seen


def assert_layers_match(seen: dict, trace: dict, stream: str, **tol) -> None:
    """Layer by layer, so that a disagreement names the first layer where it appears."""
    for i in trace["conv_in"]:
        torch.testing.assert_close(seen["conv_in"][i], trace["conv_in"][i], **tol,
                                   msg=lambda m, i=i: f"{stream}.{i} (conv) input: {m}")
        torch.testing.assert_close(seen["bn_out"][i], trace["bn_out"][i], **tol,
                                   msg=lambda m, i=i: f"{stream}.{i + 1} (BatchNorm) output: {m}")
    torch.testing.assert_close(seen["feature"], trace["feature"], **tol,
                               msg=lambda m: f"{stream} flattened feature: {m}")


@pytest.fixture(scope="module", params=SEEDS)
def model(request) -> SyncNet:
    return random_syncnet(request.param)


@pytest.fixture(scope="module")
def model64(model) -> SyncNet:
    import copy

    return copy.deepcopy(model).double().eval()


# ---- 1: the parameters are upstream's -----------------------------------------------------------------------------


def test_state_dict_keys_and_shapes_are_upstreams(model):
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_state_shapes()
    assert sorted(set(want) - set(got)) == [], "keys upstream has that the module lacks"
    assert sorted(set(got) - set(want)) == [], "keys the module has that upstream lacks"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert wrong == {}, "(module, upstream) shapes"
    # The count, as a cross-check on the table: 6 + 6 conv blocks, 2 heads
    assert len(want) == (6 * 2 + 6 * 5) * 2 + (2 + 5 + 2) * 2


def test_strict_load_of_an_upstream_shaped_state(model):
    """A state with exactly upstream's keys and shapes (what syncnet_v2.model holds) loads strict."""
    g = torch.Generator().manual_seed(7)
    state = {k: (torch.randn(s, generator=g) if s else torch.tensor(3)) for k, s in expected_state_shapes().items()}
    fresh = random_syncnet(123)
    fresh.load_state_dict(state, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v.to(state[k].dtype), state[k]), k


def test_random_syncnet_is_eval_seeded_with_nontrivial_bn_stats(model):
    assert isinstance(model, SyncNet)
    assert not model.training
    assert all(not m.training for m in model.modules())
    sd = model.state_dict()
    for key in expected_state_shapes():
        if key.endswith(".running_mean"):
            assert sd[key].abs().max() > 1e-3, f"{key} is zero: the BN path would test nothing"
        if key.endswith(".running_var"):
            var = sd[key]
            assert (var > 0).all(), key
            assert (var - 1).abs().max() > 1e-3, f"{key} is all ones: the BN path would test nothing"
    # Same seed, same weights; another seed, other weights
    again = random_syncnet(SEEDS[0]).state_dict()
    other = random_syncnet(SEEDS[1]).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in random_syncnet(SEEDS[0]).state_dict().items())
    assert not torch.equal(again["netcnnlip.0.weight"], other["netcnnlip.0.weight"])


# ---- 2: the restatement's layer shapes ----------------------------------------------------------------------------


def test_restatement_block_shapes(model):
    sd = state64(model)
    mfcc, frames = inputs(0)
    emb_a, trace_a = reference_aud(mfcc.double(), sd)
    emb_l, trace_l = reference_lip(frames[:1].double(), sd)
    assert [tuple(t.shape[1:]) for t in trace_a["block_out"]] == AUDIO_SHAPES
    assert [tuple(t.shape[1:]) for t in trace_l["block_out"]] == LIP_SHAPES
    assert tuple(trace_a["feature"].shape) == (N_AUDIO, 512) and tuple(trace_l["feature"].shape) == (1, 512)
    assert tuple(emb_a.shape) == (N_AUDIO, EMBED) and tuple(emb_l.shape) == (1, EMBED)


# ---- 3: the module's forward against the restatement --------------------------------------------------------------


@pytest.mark.parametrize("stream", ["aud", "lip"])
def test_forward_matches_restatement_float64(model64, stream):
    """The module (a float64 copy) and the restatement on the same float64 inputs: every conv's input, every
    BatchNorm's output, the flattened feature and the embedding to 1e-5."""
    mfcc, frames = inputs(0)
    sd = state64(model64)
    if stream == "aud":
        x = mfcc.double()
        out, seen = captured(model64, "netcnnaud", "netfcaud", AUDIO_BLOCKS, lambda: model64.forward_aud(x))
        ref, trace = reference_aud(x, sd)
        name = "netcnnaud"
    else:
        x = frames.double()
        out, seen = captured(model64, "netcnnlip", "netfclip", LIP_BLOCKS, lambda: model64.forward_lip(x))
        ref, trace = reference_lip(x, sd)
        name = "netcnnlip"
    # Not a degenerate check: the feature and the embedding carry signal
    assert (trace["feature"] > 0).any(), "every ReLU output zero: pick other inputs"
    assert ref.std() > 0
    assert_layers_match(seen, trace, name, rtol=1e-5, atol=1e-5)
    assert out.dtype == torch.float64 and tuple(out.shape) == tuple(ref.shape)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stream", ["aud", "lip"])
def test_forward_float32_matches_restatement(model, stream):
    """The module as the API runs it (float32 in, float32 out) against the float64 restatement: to 1e-5 of the
    embedding's scale (float32's accumulations over the 0..255 frames differ from float64's in the last bits)."""
    mfcc, frames = inputs(1)
    sd = state64(model)
    with torch.no_grad():
        if stream == "aud":
            out = model.forward_aud(mfcc)
            ref, _ = reference_aud(mfcc.double(), sd)
        else:
            out = model.forward_lip(frames)
            ref, _ = reference_lip(frames.double(), sd)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == ((N_AUDIO if stream == "aud" else N_LIP), EMBED)
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * max(scale, 1.0))
