"""The `--arch` grammar: blocks separated by '-'.

    256        a dense block of 256 units
    32C5       a conv block of 32 filters of 5×5 ('same' padding, stride 1)
    P2         a 2×2 max pool (stride 2) closing the conv block before it

e.g. `32C5-P2-64C3-P2-256`.  Conv blocks come before dense blocks; a dense
block after a conv block flattens its input.  Parsing needs no TensorFlow, so
flags are checked before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import re

from errors import UsageError

_TOKEN = re.compile(r"^(?:(?P<dense>\d+)|(?P<filters>\d+)C(?P<kernel>\d+)|"
                    r"P(?P<pool>\d+))$")
_VALID = "valid tokens: N (dense units), NCk (conv), Pk (max pool)"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    kind: str  # "dense" or "conv"
    units: int  # dense units or conv filters
    kernel: int = 0  # conv kernel size
    pool: int = 0  # max-pool size after the activation, 0 for none


def parse(text: str) -> tuple[BlockSpec, ...]:
    """Parses an arch string into block specs; raises UsageError."""
    if not text or not text.strip():
        raise UsageError(f"empty arch string ({_VALID})")
    blocks: list[BlockSpec] = []
    for token in text.strip().split("-"):
        match = _TOKEN.match(token.strip())
        if not match:
            raise UsageError(f"unknown arch token '{token}' in '{text}' "
                             f"({_VALID})")
        if match["dense"]:
            blocks.append(BlockSpec("dense", _count(match["dense"], token)))
        elif match["filters"]:
            if blocks and blocks[-1].kind == "dense":
                raise UsageError(f"conv token '{token}' after a dense block "
                                 f"in '{text}' (conv blocks come first)")
            blocks.append(BlockSpec("conv", _count(match["filters"], token),
                                    kernel=_count(match["kernel"], token)))
        else:
            if not blocks or blocks[-1].kind != "conv" or blocks[-1].pool:
                raise UsageError(f"pool token '{token}' in '{text}' must "
                                 "follow a conv token (e.g. 32C5-P2)")
            blocks[-1] = dataclasses.replace(
                blocks[-1], pool=_count(match["pool"], token))
    return tuple(blocks)


def _count(digits: str, token: str) -> int:
    value = int(digits)
    if value < 1:
        raise UsageError(f"arch token '{token}': sizes must be at least 1")
    return value
