import torch

from segmenter.ml.model.networks import build_network
from segmenter.ml.model.pretrained import SE_OPEN_BIAS, lite_state_dict, seed_encoder_from_lite


def test_the_b0_encoder_takes_every_lite0_tensor_but_squeeze_excitation():
    net = build_network("unet_b0")
    counts = seed_encoder_from_lite(net.encoder, "lite0")
    lite = lite_state_dict("lite0")
    state = net.encoder.state_dict()
    se = [k for k in state if "_se_" in k]
    assert counts["copied"] == len(state) - len(se)
    # grey stem = the sum of the RGB filters
    assert torch.allclose(state["_conv_stem.weight"], lite["_conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(state["_blocks.7._depthwise_conv.weight"], lite["_blocks.7._depthwise_conv.weight"])


def test_squeeze_excitation_gates_start_open():
    net = build_network("pspnet_b2")
    seed_encoder_from_lite(net.encoder, "lite2")
    state = net.encoder.state_dict()
    assert torch.all(state["_blocks.3._se_expand.weight"] == 0)
    assert torch.all(state["_blocks.3._se_expand.bias"] == SE_OPEN_BIAS)


def test_b2_blocks_are_matched_stage_by_stage():
    net = build_network("pspnet_b2")
    seed_encoder_from_lite(net.encoder, "lite2")
    lite = lite_state_dict("lite2")
    state = net.encoder.state_dict()
    # b2 has two blocks in its first stage, Lite2 one: b2 block 2 is Lite2 block 1
    assert torch.equal(state["_blocks.2._expand_conv.weight"], lite["_blocks.1._expand_conv.weight"])
