"""MedRegA's conversation template ("Hermes-2") and image-token expansion.

As in InternVL-Chat-V1.2's ``chat()``: the question carries an ``<image>`` placeholder (one is put
in front, followed by a newline, when it has none); the first placeholder becomes ``<img>``,
``image_seq_length`` x ``<IMG_CONTEXT>`` and ``</img>``; the result is wrapped in the Hermes-2
template whose separator ``<|im_end|>`` is also the stop token.
"""

from __future__ import annotations

__all__ = [
    "IMAGE_PLACEHOLDER",
    "IMG_START",
    "IMG_END",
    "IMG_CONTEXT",
    "IM_START",
    "IM_END",
    "SYSTEM_MESSAGE",
    "MEDREGA_SPECIAL_TOKENS",
    "YI_SPECIAL_TOKENS",
    "build_query",
    "cut_at_stop",
]

IMAGE_PLACEHOLDER = "<image>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SYSTEM_MESSAGE = "Answer the questions."

#: The chat tokens of Yi's tokenizer (ids 0-5 in the real checkpoint and the parity fixture).
YI_SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>",
    "<|startoftext|>",
    "<|endoftext|>",
    IM_START,
    IM_END,
    "<|im_sep|>",
)
#: The nine tokens InternVL/MedRegA add to the tokenizer, in their order.
MEDREGA_SPECIAL_TOKENS: tuple[str, ...] = (
    IMG_START,
    IMG_END,
    IMG_CONTEXT,
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)


def build_query(question: str, image_seq_length: int) -> str:
    """The full prompt text MedRegA's ``chat()`` tokenizes for one image and one question."""
    if image_seq_length < 1:
        raise ValueError("image_seq_length must be positive")
    if IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    prompt = (
        f"{IM_START}system\n{SYSTEM_MESSAGE}{IM_END}"
        f"{IM_START}user\n{question}{IM_END}"
        f"{IM_START}assistant\n"
    )
    image_tokens = IMG_START + IMG_CONTEXT * image_seq_length + IMG_END
    return prompt.replace(IMAGE_PLACEHOLDER, image_tokens, 1)


def cut_at_stop(text: str) -> str:
    """The answer before the first ``<|im_end|>``, stripped (as ``chat()`` returns it)."""
    return text.split(IM_END, 1)[0].strip()
