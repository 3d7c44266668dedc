"""What each `--arch` token and option means: the block specs and the
table that reads one token (a regex and a builder per form) or one option.
arch.py combines tokens into a network; this module reads them one at a
time.  Needs no TensorFlow."""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from runtime.errors import UsageError

@dataclasses.dataclass(frozen=True)
class Pool:
    """A pooling op: max or avg over k×k windows with stride s, or global."""

    kind: str  # "max", "avg", "global" or a head (HEAD_TOKENS)
    size: int = 0
    stride: int = 0

    @property
    def head(self) -> bool:
        """A token network's head (LayerNorm, then a pool of the tokens)."""
        return self.kind in HEAD_TOKENS

    @property
    def token(self) -> str:
        if self.head:
            return HEAD_TOKENS[self.kind]
        if self.kind == "global":
            return "G"
        letter = "P" if self.kind == "max" else "A"
        return f"{letter}{self.size}" + (
            f"s{self.stride}" if self.stride != self.size else "")


TOKEN_KINDS = ("embed", "transformer", "mixer")
HEAD_TOKENS = {"head_mean": "Hm", "head_cls": "Hc", "head_flat": "Hf"}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block.  Options left None take the global flag."""

    kind: str  # "dense", "conv", "residual", "embed", "transformer", "mixer"
    units: int  # dense units, conv/residual filters, embedding width d
    kernel: int = 0  # conv kernel size (residual: 3; embed: the patch)
    stride: int = 1
    padding: str | int = "same"  # "same", "valid" or pixels on each side
    pre: Pool | None = None  # pool after the previous feedback point
    post: Pool | None = None  # pool before this block's feedback point
    batch_norm: bool | None = None
    use_bias: bool | None = None
    dropout: float | None = None
    token: str = ""  # as written, for messages
    heads: int = 0  # transformer: attention heads
    ratio: int = 0  # transformer: MLP hidden width / d
    token_hidden: int = 0  # mixer: token-mixing MLP's hidden width
    channel_hidden: int = 0  # mixer: channel-mixing MLP's hidden width
    cls: bool = False  # embed: a class token first
    layer_norm: bool = False  # dense: LayerNorm after the layer

    @property
    def spatial(self) -> bool:
        return self.kind in ("conv", "residual")

    @property
    def tokens(self) -> bool:
        """Whether the block's output is tokens (before any head)."""
        return self.kind in TOKEN_KINDS

    def resolved(self, batch_norm: bool, use_bias: bool,
                 dropout: float) -> "BlockSpec":
        """The spec with every option set (global flags where unset)."""
        pick = (lambda own, default: default if own is None else own)
        if self.tokens:  # (LayerNorms of their own; never batch norm)
            batch_norm = False
        return dataclasses.replace(
            self, batch_norm=pick(self.batch_norm, batch_norm),
            use_bias=pick(self.use_bias, use_bias),
            dropout=pick(self.dropout, dropout))


# --- The token table: regex → builder ----------------------------------------


def _int(text, token, least=1):
    value = int(text)
    if value < least:
        raise UsageError(f"arch token '{token}': sizes must be at least "
                         f"{least}")
    return value


def _dense(m, token):
    return BlockSpec("dense", _int(m["units"], token), token=token)


def _conv(m, token):
    padding = ("valid" if m["valid"] else
               _int(m["pad"], token, 0) if m["pad"] is not None else "same")
    return BlockSpec("conv", _int(m["units"], token),
                     kernel=_int(m["kernel"], token),
                     stride=_int(m["stride"] or "1", token), padding=padding,
                     token=token)


def _residual(m, token):
    return BlockSpec("residual", _int(m["units"], token), kernel=3,
                     stride=_int(m["stride"] or "1", token), padding=1,
                     token=token)


def _pool(kind):
    def build(m, token):
        size = _int(m["size"], token)
        return Pool(kind, size, _int(m["stride"] or str(size), token))
    return build


def _global(m, token):
    return Pool("global")


def _embed(m, token):
    return BlockSpec("embed", _int(m["units"], token),
                     kernel=_int(m["patch"], token), token=token)


def _transformer(m, token):
    return BlockSpec("transformer", 0, heads=_int(m["heads"], token),
                     ratio=_int(m["ratio"] or "4", token), token=token)


def _mixer(m, token):
    return BlockSpec("mixer", 0, token_hidden=_int(m["tokens"], token),
                     channel_hidden=_int(m["channels"], token), token=token)


def _head(m, token):
    return Pool({"m": "head_mean", "c": "head_cls", "f": "head_flat"}[
        m["how"]])


_S = r"(?:s(?P<stride>\d+))?"
# (form shown in messages, regex, builder); the first match wins.
TOKENS: tuple[tuple[str, re.Pattern, Callable], ...] = (
    ("N (dense)", re.compile(r"(?P<units>\d+)"), _dense),
    ("NCk[sS][v|pP] (conv)", re.compile(
        r"(?P<units>\d+)C(?P<kernel>\d+)" + _S +
        r"(?:(?P<valid>v)|p(?P<pad>\d+))?"), _conv),
    ("RN[sS] (residual unit)", re.compile(r"R(?P<units>\d+)" + _S),
     _residual),
    ("Pk[sS] (max pool)", re.compile(r"P(?P<size>\d+)" + _S), _pool("max")),
    ("Ak[sS] (average pool)", re.compile(r"A(?P<size>\d+)" + _S),
     _pool("avg")),
    ("G (global average pool)", re.compile(r"G(?:AP)?"), _global),
    ("EdpP (patch embedding)", re.compile(
        r"E(?P<units>\d+)p(?P<patch>\d+)"), _embed),
    ("TH[rR] (transformer block)", re.compile(
        r"T(?P<heads>\d+)(?:r(?P<ratio>\d+))?"), _transformer),
    ("MScC (mixer block)", re.compile(
        r"M(?P<tokens>\d+)c(?P<channels>\d+)"), _mixer),
    ("Hm/Hc/Hf (token head)", re.compile(r"H(?P<how>[mcf])"), _head),
)


def _dropout_option(text):
    rate = float(text)
    if not 0 <= rate < 1:
        raise ValueError
    return ("dropout", rate)


OPTIONS: dict[str, Callable[[str], tuple]] = {  # prefix: value → (field, v)
    "nobn": lambda rest: ("batch_norm", False),
    "bn": lambda rest: ("batch_norm", True),
    "nobias": lambda rest: ("use_bias", False),
    "bias": lambda rest: ("use_bias", True),
    "d": _dropout_option,
    "ln": lambda rest: ("layer_norm", True),
    "cls": lambda rest: ("cls", True),
}
OPTION_FORMS = ":bn :nobn :bias :nobias :dRATE :ln :cls"


def read_option(option: str) -> tuple:
    """(field, value) of one option; ValueError when it is none."""
    for prefix in sorted(OPTIONS, key=len, reverse=True):  # nobn before bn
        rest = option[len(prefix):]
        if option.startswith(prefix) and (rest == "" or prefix == "d"):
            return OPTIONS[prefix](rest)
    raise ValueError(option)


def read_options(spec: BlockSpec, options: list[str], whole: str) -> BlockSpec:
    changes = {}
    for option in options:
        try:
            field, value = read_option(option)
        except ValueError:
            raise UsageError(f"unknown option ':{option}' of arch token "
                             f"'{spec.token}' in '{whole}' (valid options: "
                             f"{OPTION_FORMS}, RATE in [0, 1))") from None
        changes[field] = value
    return dataclasses.replace(spec, **changes)
