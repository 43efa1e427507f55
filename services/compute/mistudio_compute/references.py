"""What a request names, read without importing torch: a llama2.c model reference and the
files it stands for, and a token file's provenance sidecar.

The command line and the bench name these files before the local stack starts; keeping them
out of ``model_access`` and ``tokens`` (which import torch, a second of CPU) lets that import
run while the store's process starts instead of before it.
"""

from __future__ import annotations

from pathlib import Path

from mistudio_common.errors import InvalidArgument

from mistudio_compute.input_files import InputKind, InputPolicy

MODEL_FIELD = "model_id"
LLAMA2C_PREFIX = "llama2c:"
_TOKENIZER_QUERY = "?tokenizer="
PROVENANCE_SUFFIX = ".provenance.json"


def parse_llama2c_ref(ref: str) -> tuple[Path, Path]:
    """Splits "llama2c:<model.bin>?tokenizer=<tok.bin>"; without a tokenizer, the sibling
    ``tokenizer.bin`` (llama2.c's default name) is used."""
    body = ref.removeprefix(LLAMA2C_PREFIX)
    model_part, sep, tok_part = body.rpartition(_TOKENIZER_QUERY)
    if not sep:
        model_part, tok_part = body, ""
    if not model_part:
        raise InvalidArgument(
            f"no checkpoint path in {ref!r}",
            field=MODEL_FIELD,
            fix="write llama2c:<path/to/model.bin>?tokenizer=<path/to/tok.bin>",
        )
    model_path = Path(model_part).expanduser()
    tokenizer_path = (
        Path(tok_part).expanduser() if tok_part else model_path.parent / "tokenizer.bin"
    )
    return model_path, tokenizer_path


def confine_model(model_ref: str, inputs: InputPolicy) -> None:
    """Refuses a llama2.c reference whose files ``inputs`` does not allow (hub names pass)."""
    ref = model_ref.strip()
    if ref.startswith(LLAMA2C_PREFIX):
        model_path, tokenizer_path = parse_llama2c_ref(ref)
        inputs.file(model_path, InputKind.MODEL_FILE, MODEL_FIELD)
        inputs.file(tokenizer_path, InputKind.MODEL_FILE, MODEL_FIELD)


def portable_model_name(ref: str) -> str:
    """The model's name outside this machine (files we publish): a llama2c checkpoint's stem
    ("stories260K"), never its local path; TransformerLens names are already portable."""
    if ref.startswith(LLAMA2C_PREFIX):
        return parse_llama2c_ref(ref)[0].stem
    return ref


def provenance_path(token_file: Path) -> Path:
    return token_file.with_name(token_file.name + PROVENANCE_SUFFIX)
