"""The one stage table: every proto stage has a label and a weight, and trackers use them."""

from __future__ import annotations

from mistudio.common.v1 import progress_pb2 as pb
from mistudio_common import stages


def test_every_proto_stage_is_in_the_table() -> None:
    declared = {v for v in pb.Stage.values() if v != pb.STAGE_UNSPECIFIED}
    assert {spec.stage for spec in stages.STAGE_TABLE} == declared
    assert tuple(s.stage for s in stages.STAGE_TABLE) == stages.COMPUTE_STAGES + stages.FILE_STAGES


def test_a_tracker_weights_its_stages_by_the_table() -> None:
    tracker = stages.tracker("job", [pb.STAGE_ACTIVATION_PASS, pb.STAGE_CACHING])
    tracker.finish_stage(pb.STAGE_ACTIVATION_PASS)
    assert tracker.snapshot().fraction == 12.0 / 13.0


def test_an_unknown_stage_is_labelled_as_starting() -> None:
    assert stages.label(pb.STAGE_UNSPECIFIED) == "Starting"
    assert stages.label(pb.STAGE_CACHING) == "Caching dashboard data"
