"""The `--arch` grammar: a network as blocks separated by '-'.

A block is the stretch between two feedback points: a direct rule (dfa,
dkp, fdfa, drtp, cce, mse) sends its teaching signal to each block's
output, and chained rules (bp, fa, kp) send their error through it.

    token          block
    256            dense layer of 256 units
    32C5           convolution, 32 filters of 5×5, 'same' padding, stride 1
    32C3v          ... 'valid' padding (no padding)
    96C11s4p2      ... stride 4, 2 pixels of zero padding on every side
    16C3s2         ... stride 2, 'same' padding (TensorFlow's: output
                   ⌈size/2⌉, the extra row and column at the end)
    R16, R32s2     residual unit (He et al. 2016, CIFAR ResNets): 3×3 conv
                   (stride s, 1 pixel padding) → BN → act → 3×3 conv → BN,
                   plus the input (identity shortcut) or, when the unit
                   changes the channels or the stride, a 1×1 conv (stride s)
                   → BN; then act.  One block: one feedback point.
    P2, P3s2       max pool k×k, stride s (default k): 'valid' windows
    A2, A3s2       average pool, same windows
    G (or GAP)     global average pool: one value per channel
    E64p7          patch embedding (ViT): the image cut into p×p patches
                   (non-overlapping), each mapped to d = 64 dimensions, plus
                   learned position embeddings; `:cls` prepends a class
                   token.  Its output is tokens (T, d).
    T4, T4r2       transformer encoder block, pre-norm: LayerNorm →
                   multi-head self-attention (4 heads) → + input; LayerNorm
                   → MLP (GELU, hidden width r·d, default r 4) → + input
    M64c256        MLP-Mixer block: LayerNorm → token-mixing MLP (GELU,
                   hidden width 64, across the tokens) → + input; LayerNorm
                   → channel-mixing MLP (GELU, hidden width 256) → + input
    Hm, Hc, Hf     the head of a token network: LayerNorm, then the mean
                   over the tokens (m), the class token (c) or every token,
                   flattened (f: T·d features).  Written
                   after the last token block, it comes after that block's
                   feedback point, as ViT's head is the classifier's: it
                   opens the next (dense) block, or the output layer

A pool written after a block's token (`32C5-P2`) closes that block: it
comes before the feedback point.  A pool joined with '+' to the next
block's token (`40C5-P2+128`) opens that block: it comes after the
previous block's feedback point, as both CNN references hook their
feedback before the max pool.  A block has at most one pool on each side.

Options follow a layer token after ':' and override the global flags for
that block: `:bn` / `:nobn` (batch norm after the layer(s), `--batch_norm`),
`:bias` / `:nobias` (`--use_bias`), `:dRATE` (dropout on the block's
output as the next block reads it, `--dropout`), e.g. `128:nobn:d0.5`;
`:ln` (a dense block: LayerNorm after its layer, in place of batch norm)
and `:cls` (a patch embedding: a class token).

Token blocks (E, T, M) come after the convolutions and before the dense
blocks: a patch embedding reads an image (the input, or a conv block's
maps), transformer and mixer blocks read tokens, and a dense block (or the
output layer) after them flattens the tokens (T·d), unless a head pooled
them (d).

Convolution and residual blocks come before dense blocks; a dense block
after them flattens its input, and so does the output layer.  `NAME`
takes a named reference network (`PRESETS`, below), whose options are all
pinned: its blocks are the same whatever --batch_norm, --dropout and
--use_bias say (the output layer's bias follows --use_bias).  e.g. `32C5-P2-64C3-P2-256`, `500-500`, `resnet20`.

Parsing needs no TensorFlow, so flags are checked before anything heavy
is imported; shapes.py does the shape and size arithmetic.
"""

from __future__ import annotations

import dataclasses

from arch_tokens import (OPTION_FORMS, TOKENS, BlockSpec, Pool,
                         read_options)
from runtime.errors import UsageError




def valid_forms() -> str:
    return (f"valid tokens: {', '.join(form for form, _, _ in TOKENS)}; "
            f"X+ before a token opens its block with pool X; options "
            f"{OPTION_FORMS}; presets {', '.join(PRESETS)}")


def _token(text: str, whole: str):
    for _, pattern, build in TOKENS:
        match = pattern.fullmatch(text)
        if match:
            return build(match, text)
    raise UsageError(f"unknown arch token '{text}' in '{whole}' "
                     f"({valid_forms()})")




def parse(text: str) -> tuple[BlockSpec, ...]:
    """Parses an arch string (or a preset's name) into block specs; raises
    UsageError with one line naming the bad token and the valid forms."""
    if not text or not text.strip():
        raise UsageError(f"empty arch string ({valid_forms()})")
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text].specs()
    blocks: list[BlockSpec] = []
    for part in text.split("-"):
        *pre_tokens, last = part.split("+")
        head, *options = last.split(":")
        op = _token(head, text)
        pres = [_token(t, text) for t in pre_tokens]
        if isinstance(op, Pool):
            if pre_tokens or options:
                raise UsageError(
                    f"'{part}' in '{text}': a pool takes no options and "
                    "'+' must join a pool to a layer token (e.g. P2+128)")
            _close(blocks, op, text)
            continue
        if any(not isinstance(p, Pool) for p in pres) or len(pres) > 1:
            raise UsageError(f"'{part}' in '{text}': only one pool may open "
                             "a block, joined with '+' (e.g. P2+128)")
        spec = read_options(dataclasses.replace(op, pre=pres[0] if pres else None,
                                            token=part), options, text)
        _check_order(blocks, spec, text)
        blocks.append(_opened_by_head(blocks, spec, text))
    return tuple(blocks)


def _opened_by_head(blocks, spec, text) -> BlockSpec:
    """A head written after the previous block comes after its feedback
    point: it opens this block (held as the previous block's `post` until
    a block follows; the last block's is the output layer's)."""
    if not blocks or blocks[-1].post is None or not blocks[-1].post.head:
        return spec
    if spec.pre is not None:
        raise UsageError(f"'{spec.token}' in '{text}': the head before it "
                         "already opens it (one opener per block)")
    head = blocks[-1].post
    blocks[-1] = dataclasses.replace(blocks[-1], post=None)
    return dataclasses.replace(spec, pre=head)


def output_head(specs) -> Pool | None:
    """The head that opens the output layer (after the last block's
    feedback point), if the arch ends with one."""
    post = specs[-1].post if specs else None
    return post if post is not None and post.head else None


def output_kind(blocks) -> str:
    """What the last block gives the next: "image" (the input too),
    "tokens" or "flat"."""
    if not blocks:
        return "image"
    last = blocks[-1]
    if last.post is not None and (last.post.kind == "global"
                                  or last.post.head):
        return "flat"
    return ("image" if last.spatial else "tokens" if last.tokens
            else "flat")


def _close(blocks, pool, text) -> None:
    if pool.head:
        if not blocks or not blocks[-1].tokens or blocks[-1].post:
            raise UsageError(f"head token '{pool.token}' in '{text}' must "
                             "close a token block (e.g. E64p7-T4-Hm)")
        if pool.kind == "head_cls" and not any(b.cls for b in blocks):
            raise UsageError(f"head token 'Hc' in '{text}' reads the class "
                             "token, but no patch embedding has one (add "
                             ":cls to it, e.g. E64p7:cls, or use Hm)")
    elif not blocks or not blocks[-1].spatial or blocks[-1].post is not None:
        raise UsageError(f"pool token '{pool.token}' in '{text}' must follow "
                         "a conv or residual token (e.g. 32C5-P2), at most "
                         "one per block, or open the next block joined with "
                         "'+' (e.g. P2+128)")
    blocks[-1] = dataclasses.replace(blocks[-1], post=pool)


def _check_order(blocks, spec, text) -> None:
    reads = output_kind(blocks)
    if spec.spatial and blocks and blocks[-1].kind == "dense":
        raise UsageError(f"conv token '{spec.token}' after a dense block in "
                         f"'{text}' (conv blocks come first)")
    if spec.pre is not None and spec.pre.head:
        raise UsageError(f"'{spec.pre.token}+' in '{text}': a head closes "
                         "the last token block (e.g. T4-Hm), it opens none")
    if spec.pre is not None and reads != "image":
        raise UsageError(f"pool '{spec.pre.token}+' in '{text}' reads a "
                         f"{'flat' if reads == 'flat' else 'token'} input "
                         "(pools need an image: put them before the dense "
                         "and token blocks)")
    if (spec.spatial or spec.kind == "embed") and reads == "tokens":
        raise UsageError(f"token '{spec.token}' in '{text}' after a token "
                         "block (convolutions and patch embeddings read "
                         "images: they come first)")
    if spec.spatial and (reads == "flat" or (spec.pre is not None
                                             and spec.pre.kind == "global")):
        raise UsageError(f"conv token '{spec.token}' in '{text}' after "
                         "global average pooling (nothing left to convolve)")
    if spec.kind == "embed" and (reads != "image" or (
            spec.pre is not None and spec.pre.kind == "global")):
        raise UsageError(f"patch embedding '{spec.token}' in '{text}' reads "
                         "a flat input (it cuts an image into patches: put "
                         "it before the dense blocks)")
    if spec.kind in ("transformer", "mixer") and reads != "tokens":
        raise UsageError(f"token '{spec.token}' in '{text}' needs tokens: "
                         "put a patch embedding before it (e.g. E64p7-T4)")
    _check_options(spec, text)


# Options that only some kinds of block take: option → (kinds, in words).
_OPTION_KINDS = {"layer_norm": (("dense",), ":ln, a dense block"),
                 "cls": (("embed",), ":cls, a patch embedding"),
                 "batch_norm": (("dense", "conv", "residual"),
                                ":bn, a dense, conv or residual block")}


def _check_options(spec, text) -> None:
    for field, (kinds, words) in _OPTION_KINDS.items():
        if getattr(spec, field) and spec.kind not in kinds:
            raise UsageError(f"'{spec.token}' in '{text}': only {words} "
                             "takes this option")


def reads_flags(text: str) -> set[str]:
    """The global flags (batch_norm, use_bias, dropout) that some block of
    the arch leaves to their flag."""
    return {field for spec in parse(text)
            for field in ("batch_norm", "use_bias", "dropout")
            if getattr(spec, field) is None
            and not (field == "batch_norm" and spec.tokens)}


# --- Named reference networks -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """A reference network: its grammar string, where it comes from, and
    the input it was published on.  Options it does not state are pinned
    off (no batch norm, no dropout) and biases on (PyTorch's default)."""

    arch: str
    source: str
    input_shape: tuple[int, int, int]

    def specs(self) -> tuple[BlockSpec, ...]:
        return tuple(spec.resolved(batch_norm=False, use_bias=True,
                                   dropout=0.0) for spec in parse(self.arch))


def _resnet(units_per_stage: int) -> str:
    """He et al. 2016's CIFAR ResNet-(6n+2): a 3×3 conv (16) then three
    stages of n residual units (16, 32, 64 filters; the first unit of
    stages 2 and 3 has stride 2), global average pooling; every conv
    bias-free with batch norm."""
    units = [f"R{width}{'s2' if stage and not i else ''}:bn:nobias"
             for stage, width in enumerate((16, 32, 64))
             for i in range(units_per_stage)]
    return "-".join(["16C3p1:bn:nobias", *units]) + "-G"


PRESETS: dict[str, Preset] = {
    # Bacho & Chu 2024, github.com/Florian-BACHO/FDFA networks/conv_mnist.py:
    # conv → BN → ReLU → [feedback], the max pool after conv2's feedback;
    # 529,214 trainable parameters on 28×28×1.
    "fdfa_conv_mnist": Preset("15C5v:bn-40C5v:bn-P2+128:bn",
                              "FDFA networks/conv_mnist.py", (28, 28, 1)),
    # The same network on CIFAR-10 (networks/conv_cifar10.py): 755,244.
    "fdfa_conv_cifar10": Preset("15C5v:bn-40C5v:bn-P2+128:bn",
                                "FDFA networks/conv_cifar10.py", (32, 32, 3)),
    # Webster, Choi & Ahn 2021, github.com/webstah/dkp-gist networks/conv.py:
    # BN on the convolutions, none on the dense layer; the max pool after
    # conv2's feedback; 6272 inputs to the dense layer.
    "dkp_cifar10": Preset("32C3v:bn-32C3v:bn-P2+128",
                          "dkp-gist networks/conv.py", (32, 32, 3)),
    # AlexNet with batch norm as FDFA trains it on CIFAR-100 resized to
    # 224×224 (networks/alexnet_cifar100.py; dkp-gist's alexnet has no BN
    # on its dense layers): conv → BN → ReLU → pool → [feedback]; its
    # adaptive 6×6 average pool is the identity at 224×224 and dropout is
    # commented out.  57,432,228 parameters with 100 classes.
    "alexnet_cifar100": Preset(
        "64C11s4p2:bn-P3s2-192C5p2:bn-P3s2-384C3p1:bn-256C3p1:bn-"
        "256C3p1:bn-P3s2-4096:bn-4096:bn",
        "FDFA networks/alexnet_cifar100.py", (224, 224, 3)),
    # He et al. 2016 §4.2, as biotorch's models/small_resnet.py builds them,
    # with the 1×1 projection shortcut (its option 'B') where a unit changes
    # size: 272,474 and 855,770 parameters with 10 classes.
    "resnet20": Preset(_resnet(3), "biotorch models/small_resnet.py",
                       (32, 32, 3)),
    "resnet56": Preset(_resnet(9), "biotorch models/small_resnet.py",
                       (32, 32, 3)),
    # LeNet-5 as biotorch benchmarks it (models/le_net.py, LeNetMNIST) on
    # MNIST resized to 32×32: 61,706 parameters.
    "lenet5": Preset("6C5v-P2-16C5v-P2-120C5v-84",
                     "biotorch models/le_net.py", (32, 32, 1)),
    # Three-block ViT and MLP-Mixer for MNIST, the networks of Nakajima et
    # al. 2022's Table 2 (ViT-3, Mixer-3), whose sizes the paper does not
    # give: 7×7 patches (16 tokens); the ViT's of 128 features, 4 heads
    # and MLPs of 2·128 (426,634 parameters; at 64 features, 115,018, DFA
    # stayed 2.1 points below BP: 96.45 % against 98.58 %), the Mixer's of
    # 64, token MLPs of 64 and channel MLPs of 128 (71,482).  The head
    # keeps every token (Hf):
    # with a pooled one (Hm) DFA fell below the last-layer-only control
    # (MNIST, 30 %, 1 epoch: 23 % against 41 %; bp 89 %), its random
    # feedback of each token unable to align with one output map shared
    # by every token (README, "Transformers and MLP-Mixers").
    "vit_mnist": Preset("E128p7-T4r2-T4r2-T4r2-Hf",
                        "Nakajima et al. 2022, ViT-3", (28, 28, 1)),
    "mixer_mnist": Preset("E64p7-M64c128-M64c128-M64c128-Hf",
                          "Nakajima et al. 2022, Mixer-3", (28, 28, 1)),
    # A small ViT for CIFAR-10 from scratch: 4×4 patches (64 tokens) of
    # 128 features, six blocks of 4 heads, MLPs of 2·128 (891,530
    # parameters).  Its head keeps every token (Hf), as the MNIST ones
    # do, so that the direct rules can train it; ViT's own mean pooling
    # is `-Hm` at the end of the same string.
    "vit_cifar10": Preset("E128p4-" + "-".join(["T4r2"] * 6) + "-Hf",
                          "ViT (Dosovitskiy et al. 2021), small",
                          (32, 32, 3)),
}
