"""From a request to a computation ready to run: SAE, model, hook, tokens and parameters,
each checked so that a bad request fails with INVALID_ARGUMENT before any job exists.

Loaded models are cached by (reference, device): loading is the slow part of a small job, and
jobs on one cached model take turns through a per-model lock (hooks are per-call).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from mistudio_common import dashboard as d
from mistudio_common.dashboard_options import Component, logit_lens_defined
from mistudio_common.errors import InvalidArgument

from mistudio_compute.config import ComputeSettings
from mistudio_compute.dashboards.distributed import Sharding
from mistudio_compute.dashboards.memory import ShardPlan, plan_within_budget
from mistudio_compute.dashboards.params import state_config, validate_params
from mistudio_compute.hooks import HookKind, hook_name
from mistudio_compute.input_files import InputKind, InputPolicy, Opener
from mistudio_compute.model_access import LoadedModel, load_model
from mistudio_compute.references import confine_model, provenance_path
from mistudio_compute.run_dashboards import CHUNK_FEATURES, PreparedDashboards
from mistudio_compute.sae import check_against_model
from mistudio_compute.sae_source import ResolvedSae, resolve_sae
from mistudio_compute.store_client import StoreClient
from mistudio_compute.tokens import (
    FILE_FIELD,
    TEXT_FIELD,
    TokenDataset,
    TokenSourceSpec,
    load_token_source,
)
from mistudio_compute.values import ComputationRequest, EstimateRequest, HookPoint, SaeCheck, SaeRef


class ModelLoader(Protocol):
    """(model reference, device, opener) -> loaded model; ``model_access.load_model`` in
    production. ``transformer_lens_forward`` is the setting of that name, read at load time so
    that a model TransformerLens is to run is built for it and no lean forward is made."""

    def __call__(
        self, model_ref: str, device: str, open_input: Opener, *, transformer_lens_forward: bool
    ) -> LoadedModel: ...


@dataclass(frozen=True)
class TokenPlan:
    """What EstimateComputation reports: the token source and the filled parameters."""

    dataset: TokenDataset
    params: d.DashboardParams
    """With the token source's fingerprint: as the dashboards would be cached under."""
    d_in: int
    d_sae: int
    n_layers: int
    """Blocks of the SAE's model; 0 when the SAE names no model."""
    memory: ShardPlan
    """The feature shards it runs in, within the budget, and their predicted peak beyond the
    model and SAE weights."""


class Planner:
    """Resolves references and validates requests; shared by the servicer and the job manager."""

    def __init__(
        self,
        settings: ComputeSettings,
        store: StoreClient,
        model_loader: ModelLoader | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._load = model_loader or load_model
        self._inputs = settings.input_policy()
        self._models: dict[tuple[str, str], tuple[LoadedModel, threading.Lock]] = {}
        self._lock = threading.Lock()

    def model(self, model_id: str, device: str = "") -> tuple[LoadedModel, threading.Lock]:
        key = (model_id, device or self._settings.device)
        confine_model(model_id, self._inputs)
        with self._lock:  # one load per model, even when two requests race for it
            if key not in self._models:
                loaded = self._load(
                    *key,
                    self._inputs.open,
                    transformer_lens_forward=self._settings.transformer_lens_forward,
                )
                self._models[key] = (loaded, threading.Lock())
            return self._models[key]

    def resolve_sae(self, ref: SaeRef, hook_point: str = "", model_id: str = "") -> ResolvedSae:
        return resolve_sae(ref, self._store, self._inputs, hook_point, model_id)

    def validate(
        self,
        ref: SaeRef,
        hook_point: str = "",
        model_id: str = "",
        device: str = "",
        tokens: TokenSourceSpec | None = None,
    ) -> SaeCheck:
        """The SAE against its model; with tokens or a device, those as ComputeDashboards
        would check them, so a request that cannot run is refused before any job exists."""
        resolved = self.resolve_sae(ref, hook_point, model_id)
        model, _ = self.model(_require_model(resolved), device)
        check = check_against_model(resolved.sae, model, resolved.hook_point)
        if tokens is not None:
            load_model_tokens(tokens, model, self._inputs)
        return SaeCheck(
            architecture=resolved.sae.cfg.architecture,
            d_in=resolved.sae.d_in,
            d_sae=resolved.sae.d_sae,
            hook_point=check.hook_point,
            model_id=resolved.model_id,
            hook_width=check.hook_width,
            d_vocab=model.d_vocab,
            warnings=tuple(check.warnings),
        )

    def resolve_hook_point(self, model_id: str, layer: int, kind: HookKind) -> HookPoint:
        model, _ = self.model(model_id)
        name = hook_name(layer, kind, model.n_layers)
        return HookPoint(name, model.hook_width(name), model.n_layers)

    def token_plan(self, request: EstimateRequest) -> TokenPlan:
        """The token source, parameters and feature shards a computation would use, for
        EstimateComputation."""
        params = request.params
        check_params(params)
        check_batch_size(request.batch_size)
        resolved = self.resolve_sae(request.sae)
        needs_model = bool(request.tokens.text_paths or resolved.model_id)
        model = self.model(_require_model(resolved))[0] if needs_model else None
        tokenizer = model.tokenizer if model is not None else None
        dataset = load_token_source(_token_spec(request.tokens, self._inputs), tokenizer)
        params = with_hook_limits(params, resolved.hook_point)
        d_sae = resolved.sae.d_sae
        memory = plan_shards(
            self._settings,
            params,
            request.feature_count or d_sae,
            dataset,
            batch_rows=request.batch_size,
            hook_width=resolved.sae.d_in,
        )
        n_layers = model.n_layers if model is not None else 0
        filled = _filled(params, dataset)
        d_in = resolved.sae.d_in
        return TokenPlan(dataset, filled, d_in, d_sae, n_layers, memory)

    def prepare(self, request: ComputationRequest) -> PreparedDashboards:
        """Every check a request can fail before it runs, in the order a user would fix them."""
        params = request.params
        check_params(params)
        check_batch_size(request.batch_size)
        resolved = self.resolve_sae(request.sae, request.hook_point, request.model_id)
        features = _features(request.feature_indices, resolved.sae.d_sae)
        model, lock = self.model(_require_model(resolved), request.device)
        check = check_against_model(resolved.sae, model, resolved.hook_point)
        dataset = load_model_tokens(request.tokens, model, self._inputs)
        shard_plan = functools.partial(
            plan_shards,
            self._settings,
            params,
            dataset=dataset,
            batch_rows=request.batch_size,
            hook_width=resolved.sae.d_in,
        )
        shard_plan(len(features))
        return PreparedDashboards(
            sae_id=resolved.sae_id,
            sae_owner=resolved.owner,
            params=_filled(with_hook_limits(params, check.hook_point), dataset),
            feature_indices=features,
            resolved=replace(resolved, model_id=model.ref, hook_point=check.hook_point),
            model=model,
            model_lock=lock,
            dataset=dataset,
            batch_rows=request.batch_size or self._settings.default_batch_rows,
            checkpoint_every_seconds=self._settings.checkpoint_every_seconds,
            memory_budget=self._settings.memory_budget(),
            shard_plan=shard_plan,
            sharding=_sharding(self._settings),
        )


def plan_shards(
    settings: ComputeSettings,
    params: d.DashboardParams,
    n_features: int,
    dataset: TokenDataset,
    *,
    batch_rows: int,
    hook_width: int,
) -> ShardPlan:
    """The feature shards a computation of ``n_features`` runs in, as it will plan them
    (``dashboards.memory``): EstimateComputation, the job's weights and the bench all ask here.
    ``batch_rows`` 0 is the service's default; the hook activations of ``hook_width`` values per
    token may be kept between shards, not on Ray. RESOURCE_EXHAUSTED, naming what to lower,
    when not even one feature fits the budget."""
    return plan_within_budget(
        params,
        state_config(params, frozenset()),
        n_features,
        batch_rows=batch_rows or settings.default_batch_rows,
        seq_len=dataset.context_size,
        n_rows=dataset.n_rows,
        chunk_size=CHUNK_FEATURES,
        budget=settings.memory_budget(),
        hook_width=0 if settings.ray_address else hook_width,
    )


def load_model_tokens(
    tokens: TokenSourceSpec, model: LoadedModel, inputs: InputPolicy
) -> TokenDataset:
    """The token source (its files confined to ``inputs``), checked against the model: ids in
    its vocabulary, rows within its context."""
    dataset = load_token_source(_token_spec(tokens, inputs), model.tokenizer, model.d_vocab)
    if dataset.context_size > model.cfg.n_ctx:
        raise InvalidArgument(
            f"rows of {dataset.context_size} tokens exceed the model's context of "
            f"{model.cfg.n_ctx}",
            field="tokens.context_size",
            fix=f"use a context_size of at most {model.cfg.n_ctx}",
        )
    return dataset


def check_batch_size(batch_size: int) -> None:
    if batch_size < 0:
        raise InvalidArgument(
            f"batch_size {batch_size} is negative",
            field="batch_size",
            fix="use 0 for the default or a positive number of rows",
        )


def check_params(params: d.DashboardParams) -> None:
    """The computation's own range checks, with the field named as the request spells it."""
    try:
        validate_params(params)
    except InvalidArgument as error:
        raise InvalidArgument(error.message, field=f"params.{error.field}", fix=error.fix) from None


def with_hook_limits(params: d.DashboardParams, hook_point: str) -> d.DashboardParams:
    """The logit lens left out where it means nothing (attn.hook_q/k/v), before any pass runs:
    the dashboards then say so through their parameters instead of failing after the pass."""
    if logit_lens_defined(hook_point):
        return params
    return replace(params, omitted=params.omitted | {Component.LOGIT_LENS})


def _filled(params: d.DashboardParams, dataset: TokenDataset) -> d.DashboardParams:
    """``params`` as the dashboards are cached under: with the token source's fingerprint."""
    return replace(params, token_source_fingerprint=dataset.fingerprint)


def _require_model(resolved: ResolvedSae) -> str:
    if not resolved.model_id:
        raise InvalidArgument(
            "neither the request nor the SAE names a model",
            field="model_id",
            fix="set model_id in the request (or model_name in the SAE's cfg.json)",
        )
    return resolved.model_id


def _features(indices: Sequence[int], d_sae: int) -> list[int]:
    if not indices:
        return list(range(d_sae))
    bad = [i for i in indices if not 0 <= i < d_sae]
    if bad:
        raise InvalidArgument(
            f"feature indices {bad[:5]} are outside 0..{d_sae - 1}",
            field="feature_indices",
            fix=f"list features in 0..{d_sae - 1}, or none for all",
        )
    return sorted(set(indices))


def _token_spec(source: TokenSourceSpec, inputs: InputPolicy) -> TokenSourceSpec:
    """The request's token source with its files confined to ``inputs``."""
    token_file = (
        str(
            inputs.file(
                inputs.localized(source.token_file, FILE_FIELD), InputKind.TOKEN_FILE, FILE_FIELD
            )
        )
        if source.token_file
        else ""
    )
    if token_file:
        inputs.optional_file(provenance_path(Path(token_file)), InputKind.TOKEN_FILE, FILE_FIELD)
    texts = [inputs.file(path, InputKind.TEXT_FILE, TEXT_FIELD) for path in source.text_paths]
    return replace(
        source,
        token_file=token_file,
        text_paths=tuple(str(path) for path in texts),
        open_input=inputs.open,
    )


def _sharding(settings: ComputeSettings) -> Sharding | None:
    if not settings.ray_address:
        return None
    return Sharding(
        address=settings.ray_address,
        shards=settings.ray_shards,
        max_in_flight=settings.ray_max_shards_in_flight,
        gpus_per_task=settings.ray_gpus_per_task,
        max_retries=settings.ray_task_retries,
    )
