"""One export from start to finish: the stages of PRD §7.2, each resumable from its checkpoint.

VALIDATING (the selection and the base export), the compute stages (dashboards computed on
demand, cached ones reused), GENERATING_FILES (dashboards staged, every format written),
VALIDATING_OUTPUT (schema and semantic checks, optional auto-fix), CREATING_ARCHIVE (README,
prefill.json, manifest, deterministic ZIP, then one atomic publish to the object store).
Everything before the publish happens in the job's private staging folder.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.dashboard_codec import params_from_pb
from mistudio_common.dashboard_options import Component
from mistudio_common.errors import FailedPrecondition, MistudioError

from mistudio_export import checking, computing, delta
from mistudio_export.collect import Collected, collect
from mistudio_export.config import ExportSettings
from mistudio_export.downloads import fetch_to_file
from mistudio_export.estimate import measurement, predict, saelens_bytes
from mistudio_export.generate import (
    NEURONPEDIA_KINDS,
    FileCount,
    Inputs,
    Reuse,
    explanation_records,
    feature_labels,
    in_pool,
    output_dir,
    saelens_frequencies,
    write_formats,
    writing_passes,
)
from mistudio_export.messages import validation_summary_to_pb
from mistudio_export.object_store import ObjectStore, check_writable
from mistudio_export.packaging import FormatKind
from mistudio_export.peers import ExportCompute, ExportStore, TokenSource
from mistudio_export.plan import ExportPlan
from mistudio_export.preflight import Planner
from mistudio_export.publish import archive_facts, pack_and_publish, pretrained_yaml
from mistudio_export.records import SaeInfo
from mistudio_export.runtime import JobRuntime
from mistudio_export.selection import require_candidates
from mistudio_export.token_facts import TokenFacts, token_facts

log = logging.getLogger(__name__)


EARLIER_EXPORTS_CONSIDERED = 20
"""How many of the newest finished exports a job looks through for an archive to copy from."""


def archive_prefix(job_id: str) -> str:
    """Where a job's published objects live in the object store."""
    return f"exports/{job_id}/"


@functools.cache
def mistudio_version() -> str:
    """The installed package's version, read once per process: an export's files name it, so a
    reinstall while the service runs must not change what a later export of the same job says."""
    try:
        return metadata.version("mistudio-export")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class ExportPipeline:
    """Runs the stages of one export job against the store, compute and the object store."""

    def __init__(
        self,
        settings: ExportSettings,
        store: ExportStore,
        compute: ExportCompute,
        planner: Planner,
        objects: ObjectStore,
    ) -> None:
        self._settings = settings
        self._store = store
        self._compute = compute
        self._planner = planner
        self._objects = objects

    def release(self, checkpoint: jpb.ExportCheckpoint) -> None:
        """Frees what a cancelled job still holds in other services (what its run did not)."""
        computing.release(self._compute, checkpoint)

    def discard(self, job_id: str) -> None:
        """Deletes everything published for the job (its archive)."""
        for found in list(self._objects.list(archive_prefix(job_id))):
            self._objects.delete(found.key)

    def remove_unfinished_uploads(self, before: float) -> int:
        """Removes archive uploads begun before ``before`` that a crash left unfinished."""
        return self._objects.remove_unfinished(before)

    def run(self, job: JobRuntime) -> jpb.ExportOutcome:
        """Runs the remaining stages; returns the result and what later exports read."""
        plan = job.plan
        job.report(ppb.STAGE_VALIDATING, 0, 1, "checks", "checking the selection")
        check_writable(self._objects)  # before hours of computing, not at publishing
        base_job = self._planner.base_job(plan) if plan.delta_base_job_id else None
        base = delta.EarlierExport.of(base_job, self._store) if base_job else None
        kinds = [
            *(NEURONPEDIA_KINDS if plan.neuronpedia else ()),
            *((FormatKind.PREVIEW,) if plan.with_preview else ()),
            *self._saelens(plan),
        ]
        collected, computed = Collected({}, 0), cpb.ComputeResult()
        read = 0  # features whose dashboards the file stage reads before writing
        if plan.neuronpedia:
            candidates = self._candidates(plan)
            read = len(candidates)
            predicted = predict(plan, candidates, self._store, self._compute)
            job.tracker.weigh([s.seconds for s in predicted.stages])  # ETA from measured rates
            everything = len(candidates) == plan.sae.d_sae
            computed = computing.ensure_dashboards(
                job, self._compute, candidates, all_features=everything
            )
            assert plan.tokens is not None  # checked before the job was created
            params = (
                params_from_pb(computed.params)
                if computed.HasField("params")
                else self._facts(plan, plan.tokens).params
            )
            only_changed = base if base and not plan.merge_with_base else None
            if in_pool(read):
                job.workers.warm()  # spawned and importing while the dashboards are staged
            collected = collect(
                job,
                self._store,
                params,
                candidates,
                plan.selection.statistics,
                only_changed,
                self._settings.features_per_batch,
                FileCount(
                    read=read,
                    written=read,  # until the filters have kept some
                    passes=len(writing_passes(kinds, job.checkpoint.formats.done)),
                ),
            )
            if not collected.hashes and only_changed is None:
                raise FailedPrecondition(
                    "no selected feature passes the activation-frequency and max-activation "
                    "filters",
                    violations=[
                        ("config.selection", "widen min/max_frequency or lower min_max_activation")
                    ],
                    field="config.selection",
                )
        inputs = self._inputs(job, collected, base)
        copied = write_formats(
            job, kinds, inputs, self._compute, self._settings.features_per_batch, read
        )
        job.finish_stage(ppb.STAGE_GENERATING_FILES)
        summary = checking.validate_output(job, output_dir(job.staging), kinds, plan.auto_fix)
        n_features = len(collected.hashes) if plan.neuronpedia else plan.sae.d_sae
        facts = archive_facts(plan, inputs.info, kinds, n_features, summary, inputs.explanations)
        hashes: Mapping[int, str] = collected.hashes  # numpy columns: no dict per feature
        if base is not None and not plan.merge_with_base:
            hashes = {**base.hashes, **hashes}
        # The hashes are stored while the archive is packed and uploaded, not after: only a
        # SUCCEEDED record points at them, and it is written once both are complete. The
        # staging goes when the job has ended (JobKind.ended), off the result's path.
        job.report(ppb.STAGE_CREATING_ARCHIVE, 0, 0, "bytes", "recording the feature hashes")
        with ThreadPoolExecutor(1, thread_name_prefix=f"hashes-{job.job_id[:8]}") as aside:
            recorded = aside.submit(self._store.put_feature_hashes, job.job_id, hashes)
            published = pack_and_publish(job, self._objects, facts, self._archive_key(job))
            recorded.result()
        job.finish_stage(ppb.STAGE_CREATING_ARCHIVE)
        saelens_part = saelens_bytes(plan.sae) if plan.saelens else 0
        neuronpedia_bytes = max(0, published.size - saelens_part) if plan.neuronpedia else 0
        result = epb.ExportResult(
            output_uri=published.key,
            size_bytes=published.size,
            feature_count=n_features,
            features_computed=computed.features_computed,
            features_reused=computed.features_reused,
            features_unchanged=collected.skipped_unchanged + copied,
            archive_sha256=published.sha256,
            validation=validation_summary_to_pb(summary),
            files=published.files,
        )
        return jpb.ExportOutcome(
            result=result,
            render_key=delta.render_key(plan),
            feature_hash_count=len(hashes),
            measured=measurement(
                job.tracker.snapshot(), neuronpedia_bytes, len(collected.hashes), plan.params
            ),
        )

    def _saelens(self, plan: ExportPlan) -> tuple[FormatKind, ...]:
        return (FormatKind.SAELENS,) if plan.saelens else ()

    def _candidates(self, plan: ExportPlan) -> list[int]:
        sae = plan.sae
        return require_candidates(
            plan.selection, sae.d_sae, lambda f: self._store.features(sae.sae_id, f, sae.owner)
        )

    def _inputs(
        self, job: JobRuntime, collected: Collected, base: delta.EarlierExport | None
    ) -> Inputs:
        plan = job.plan
        indices = sorted(collected.hashes)
        info = self._sae_info(job)
        return Inputs(
            info=info,
            hashes=collected.hashes,
            explanations=(
                explanation_records(self._store, plan.sae, indices)
                if Component.EXPLANATIONS not in plan.omitted
                else []
            ),
            labels=(
                feature_labels(self._store, plan.sae, indices)
                if Component.EXPLANATIONS not in plan.omitted
                else []
            ),
            reuse=self._reuse(job, base) if plan.neuronpedia else None,
            saelens_frequencies=(
                saelens_frequencies(self._store, plan.sae) if plan.saelens else []
            ),
            pretrained_yaml=pretrained_yaml(plan, info) if plan.saelens else "",
        )

    def _facts(self, plan: ExportPlan, tokens: TokenSource) -> TokenFacts:
        return token_facts(self._compute, plan.sae, tokens, plan.params)

    def _sae_info(self, job: JobRuntime) -> SaeInfo:
        plan, sae = job.plan, job.plan.sae
        tokens = plan.tokens
        facts = self._facts(plan, tokens) if plan.neuronpedia and tokens is not None else None
        return SaeInfo(
            model_id=plan.naming.model_id,
            sae_id=sae.sae_id,
            hook_point=sae.hook_point,
            layer=plan.naming.layer,
            d_sae=sae.d_sae,
            d_in=sae.d_in,
            architecture=sae.architecture,
            training_dataset=sae.training_dataset,
            n_training_tokens=sae.n_training_tokens,
            l0=sae.l0,
            explained_variance=sae.explained_variance,
            created_at=plan.created_at,
            mistudio_version=mistudio_version(),
            n_prompts=facts.n_rows if facts is not None else 0,
            n_tokens_in_prompt=facts.context_size if facts is not None else 0,
            prepend_bos=facts.prepend_bos if facts is not None else False,
            dashboard_dataset=tokens.dataset_name if tokens is not None else "",
            omitted_components=tuple(sorted(c.value for c in plan.omitted)),
            model_layers=facts.n_layers if facts is not None else 0,
        )

    def _reuse(self, job: JobRuntime, base: delta.EarlierExport | None) -> Reuse | None:
        """The newest finished archive rendered like this one, downloaded for copying."""
        key = delta.render_key(job.plan)
        for candidate in [base] if base is not None else self._finished_exports(job, key):
            if candidate.render_key != key or not candidate.hashes or not candidate.output_uri:
                continue
            path = job.staging / "work" / "earlier.zip"
            try:
                fetch_to_file(self._objects, candidate.output_uri, path)
            except MistudioError as error:
                log.warning("earlier archive %s unreadable: %s", candidate.output_uri, error)
                continue
            problem = delta.archive_problem(path, candidate)
            if problem:
                log.warning("earlier archive %s not reused: %s", candidate.output_uri, problem)
                path.unlink(missing_ok=True)
                continue
            return Reuse(archive=path, hashes=dict(candidate.hashes))
        return None

    def _finished_exports(self, job: JobRuntime, key: str) -> Iterator[delta.EarlierExport]:
        """The SAE's newest finished exports rendered like this one; hashes read as needed."""
        for record in self._store.finished_jobs(job.plan.sae, EARLIER_EXPORTS_CONSIDERED):
            rendered = record.outcome.render_key if record.outcome is not None else ""
            if record.job_id != job.job_id and rendered == key:
                yield delta.EarlierExport.of(record, self._store)

    def _archive_key(self, job: JobRuntime) -> str:
        return f"{archive_prefix(job.job_id)}{job.plan.sae.sae_id}.zip"
