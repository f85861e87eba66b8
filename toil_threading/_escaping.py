"""Text from outside (disk, /proc, a job's environment) as a terminal can show it.

Details and names keep what was found; what shows them to people (the command line, the
str() of an explanation) escapes them here, once, the same way everywhere.
"""

import re

# Shown escaped: the C0 and C1 controls and DEL (they move the cursor, retitle or clear a
# terminal), the marks, embeddings, overrides and isolates that reorder bidirectional
# text, the line and paragraph separators, lone surrogates (bytes that are not UTF-8, as
# os.fsdecode keeps them), and the backslash itself, so that every escape reads one way.
_UNSAFE = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
SURROGATES = re.compile(r"[\ud800-\udfff]")


def escape_one(found: re.Match[str]) -> str:
    """One character of _UNSAFE as its escape: \\\\, \\xNN (an undecodable byte too), \\uNNNN."""
    code = ord(found.group())
    if code == 0x5C:
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # the byte os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escaped(text: str) -> str:
    """text as a terminal can show it without being steered by it: see _UNSAFE."""
    return _UNSAFE.sub(escape_one, text)
