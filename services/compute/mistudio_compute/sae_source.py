"""Where a request's SAE comes from: a record in the store, or files named in the request.

Either way the result is a loaded :class:`~mistudio_compute.sae.Sae` plus the model and hook it
reads, with request overrides applied (override > store record > the SAE's own config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.architectures import saelens_name
from mistudio_common.errors import InvalidArgument
from mistudio_common.uploaded_inputs import check_owner, is_object_uri, parse_input_uri

from mistudio_compute.input_files import InputKind, InputPolicy
from mistudio_compute.sae import Sae, load_sae
from mistudio_compute.sae.hub import HF_PREFIX, SAELENS_PREFIX, local_path
from mistudio_compute.sae.loading import CONFIG_FILE, WEIGHTS_FILE
from mistudio_compute.store_client import StoreClient
from mistudio_compute.values import SaeFiles, SaeRef, StoredSae


@dataclass(frozen=True)
class ResolvedSae:
    sae: Sae
    sae_id: str
    """The store's id; empty for an SAE given as files."""
    model_id: str
    hook_point: str
    owner: str = ""
    """The store record's owner (an sae_id is unique per owner); empty for files."""


def resolve_sae(
    ref: SaeRef,
    store: StoreClient,
    inputs: InputPolicy,
    hook_override: str = "",
    model_override: str = "",
) -> ResolvedSae:
    """Loads the referenced SAE (weights checked for shape and finiteness on the way) from
    files ``inputs`` allows."""
    if isinstance(ref, StoredSae):
        record = store.get_sae(ref.sae_id, ref.owner)
        sae = _load_registered(record, inputs)
        model_id = model_override or record.model_id or sae.model_name or ""
        hook = hook_override or record.hook_point or sae.hook_name or ""
        return ResolvedSae(sae, record.sae_id, model_id, hook, record.owner)
    if isinstance(ref, SaeFiles):
        if not ref.path:
            raise InvalidArgument(
                "no SAE path given", field="sae.files.path", fix="name a SAELens folder or file"
            )
        location, allowed = confine_sae(ref.path, inputs, "sae.files.path")
        sae = load_sae(location, dict(ref.config) or None, open_input=allowed.open)
        model_id = model_override or ref.model_id or sae.model_name or ""
        return ResolvedSae(sae, "", model_id, hook_override or sae.hook_name or "")
    raise InvalidArgument(
        "no SAE given", field="sae", fix="set sae.sae_id or sae.files in the request"
    )


def confine_sae(location: str, inputs: InputPolicy, field: str) -> tuple[Path, InputPolicy]:
    """The real path of an SAE folder or weights file whose files ``inputs`` allows, and the
    policy to open them with: hub locations resolve into the HuggingFace cache, which that
    policy allows, and uploads (``s3://``) into the upload cache."""
    if location.startswith((HF_PREFIX, SAELENS_PREFIX)):
        from huggingface_hub.constants import HF_HUB_CACHE

        path, inputs = local_path(location), inputs.with_roots(HF_HUB_CACHE)
    else:
        path = Path(inputs.localized(location, field))
    if inputs.allows(path) and Path(path).is_dir():
        folder = inputs.folder(path, field)
        inputs.file(folder / WEIGHTS_FILE, InputKind.SAE_WEIGHTS, field)
        inputs.optional_file(folder / CONFIG_FILE, InputKind.SAE_CONFIG, field)
        return folder, inputs
    weights = inputs.file(path, InputKind.SAE_WEIGHTS, field)
    inputs.optional_file(weights.parent / CONFIG_FILE, InputKind.SAE_CONFIG, field)
    return weights, inputs


def _load_registered(record: spb.Sae, inputs: InputPolicy) -> Sae:
    """A registered folder keeps its cfg.json; a bare file is described by the record. An
    uploaded folder must be the SAE owner's own upload."""
    if not record.weights_uri:
        raise InvalidArgument(
            f"SAE {record.sae_id!r} has no weights_uri in the store",
            field="weights_uri",
            fix="register the SAE with the path of its SAELens folder or safetensors file",
        )
    config = struct_config(record.config) if record.HasField("config") else {}
    if is_object_uri(record.weights_uri):
        check_owner(parse_input_uri(record.weights_uri, "weights_uri"), record.owner, "weights_uri")
    uri, allowed = confine_sae(record.weights_uri.removeprefix("file://"), inputs, "weights_uri")
    has_cfg = (
        (uri / CONFIG_FILE).is_file() if uri.is_dir() else (uri.parent / CONFIG_FILE).is_file()
    )
    if not has_cfg:
        described: dict[str, Any] = {
            "architecture": saelens_name(spb.Architecture.Name(record.architecture)) or "standard",
            "d_in": record.d_in,
            "d_sae": record.d_sae,
            "hook_name": record.hook_point or None,
            "model_name": record.model_id or None,
        }
        config = {**described, **config}
    sae = load_sae(uri, config or None, open_input=allowed.open)
    for name, registered, loaded in (
        ("d_in", record.d_in, sae.d_in),
        ("d_sae", record.d_sae, sae.d_sae),
    ):
        if registered and registered != loaded:
            raise InvalidArgument(
                f"SAE {record.sae_id!r} is registered with {name} {registered} but its weights "
                f"have {name} {loaded}",
                field=name,
                fix="re-register the SAE with the shape of its weights",
            )
    return sae


def struct_config(struct: Struct) -> dict[str, Any]:
    """An SAE config sent as a Struct (a request's or the store's) as cfg.json would read."""
    config: dict[str, Any] = _ints(json_format.MessageToDict(struct))
    return config


def _ints(value: Any) -> Any:
    """Struct numbers arrive as floats; SAE configs expect integers where they are whole."""
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
