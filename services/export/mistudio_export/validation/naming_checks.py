"""Neuronpedia naming rules applied to names found in files and folder names."""

from __future__ import annotations

from mistudio_export.records import model_id_problems, parse_source_id, source_set_problems
from mistudio_export.validation.context import FileContext
from mistudio_export.validation.report import Severity


def check_names(
    ctx: FileContext,
    model_id: str,
    source_id: str,
    *,
    model_where: str,
    source_where: str,
    layer: int | None = None,
) -> None:
    """A source id that does not parse is an error; breaking the public API's stricter rules
    (which older admin-imported names such as 'res_fs768-jb' do) is a warning."""
    for p in model_id_problems(model_id):
        ctx.report("NAMING", model_where, p.message, severity=Severity.WARNING)
    parsed = parse_source_id(source_id)
    if parsed is None:
        ctx.report(
            "NAMING",
            source_where,
            f"source id {source_id!r} is not '{{layer}}-{{sourceSet}}[__suffix]'",
        )
        return
    source_layer, source_set, _ = parsed
    for p in source_set_problems(source_set):
        ctx.report("NAMING", source_where, p.message, severity=Severity.WARNING)
    if layer is not None and layer != source_layer:
        ctx.report(
            "INCONSISTENT",
            source_where,
            f"source id {source_id!r} names layer {source_layer}, the SAE is at layer {layer}",
        )
