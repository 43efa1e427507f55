"""A chunk's examples and quantile group heads as ``FeatureDashboard`` wire bytes, sized and
written column by column (``wire``), so that finalisation builds no message per example."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mistudio.common.v1 import dashboard_pb2 as dpb

from mistudio_compute.dashboards import wire as W

_DASHBOARD, _GROUP = dpb.FeatureDashboard, dpb.QuantileGroup
_EXAMPLE, _SOURCE = dpb.ActivationExample, dpb.SourceRef


@dataclass(slots=True)
class ExampleBytes:
    """A chunk's examples in shown order (per feature, per section) as wire bytes: each an
    ``ActivationExample`` in ``FeatureDashboard.top_examples`` (field 2) or in its quantile
    group's ``examples`` (field 4). ``sizes`` measures every field, ``write`` places them."""

    section: np.ndarray  # [N] 0: top examples
    n_tokens: np.ndarray  # [N] shown tokens (at least one)
    token_ids: np.ndarray  # [T] of every example, one after another
    values: np.ndarray  # [T] float32
    text: np.ndarray  # UTF-8 of every token's display string, one after another
    text_len: np.ndarray  # [T] bytes of each
    max_value: np.ndarray  # [N]
    max_token_index: np.ndarray
    row: np.ndarray
    offset: np.ndarray
    qualifying: np.ndarray
    dataset: bytes
    _sized: dict[str, np.ndarray] = field(default_factory=dict)

    def sizes(self) -> np.ndarray:
        """Bytes of each example with its key and length."""
        vs, n, p = W.varint_sizes, self.n_tokens, self._sized
        firsts = W.exclusive_cumsum(n)
        p["token_size"] = 1 + vs(self.text_len) + self.text_len  # key, length, UTF-8
        p["id_size"] = vs(self.token_ids)
        p["tokens"] = np.add.reduceat(p["token_size"], firsts) if len(n) else n
        p["ids"] = np.add.reduceat(p["id_size"], firsts) if len(n) else n
        dataset = 1 + int(vs(np.array([len(self.dataset)]))[0]) + len(self.dataset)
        p["source"] = dataset + 2 + vs(self.row) + vs(self.offset)
        p["body"] = (
            p["tokens"]
            + 1 + vs(p["ids"]) + p["ids"]
            + 1 + vs(4 * n) + 4 * n
            + 5  # max_value
            + 1 + vs(self.max_token_index)
            + 1 + vs(p["source"]) + p["source"]
            + 1 + vs(self.qualifying)
        )  # fmt: skip
        return 1 + vs(p["body"]) + p["body"]

    def write(self, out: np.ndarray, at: np.ndarray) -> None:
        """Writes example r at ``at[r]`` (after ``sizes``)."""
        p, n = self._sized, self.n_tokens
        firsts = W.exclusive_cumsum(n)

        def within(sizes: np.ndarray) -> np.ndarray:  # [T] offset in its example's field
            before = W.exclusive_cumsum(sizes)
            return before - np.repeat(before[firsts], n) if len(n) else before

        field = np.where(
            self.section == 0, _DASHBOARD.TOP_EXAMPLES_FIELD_NUMBER, _GROUP.EXAMPLES_FIELD_NUMBER
        )
        out[at] = W.key(field, W.LEN)
        at = W.put_varints(out, at + 1, p["body"])
        token_at = np.repeat(at, n) + within(p["token_size"])  # tokens: one per token
        out[token_at] = W.key(_EXAMPLE.TOKENS_FIELD_NUMBER, W.LEN)
        after = W.put_varints(out, token_at + 1, self.text_len)
        W.put_bytes(out, after, self.text, self.text_len)
        at = at + p["tokens"]
        out[at] = W.key(_EXAMPLE.TOKEN_IDS_FIELD_NUMBER, W.LEN)  # packed
        at = W.put_varints(out, at + 1, p["ids"])
        W.put_varints(out, np.repeat(at, n) + within(p["id_size"]), self.token_ids, p["id_size"])
        at = at + p["ids"]
        out[at] = W.key(_EXAMPLE.VALUES_FIELD_NUMBER, W.LEN)  # packed
        at = W.put_varints(out, at + 1, 4 * n)
        W.put_bytes(out, at, np.ascontiguousarray(self.values, "<f4").view(np.uint8), 4 * n)
        at = at + 4 * n
        out[at] = W.key(_EXAMPLE.MAX_VALUE_FIELD_NUMBER, W.I32)
        W.put_float32s(out, at + 1, self.max_value)
        out[at + 5] = W.key(_EXAMPLE.MAX_TOKEN_INDEX_FIELD_NUMBER, W.VARINT)
        at = W.put_varints(out, at + 6, self.max_token_index)
        out[at] = W.key(_EXAMPLE.SOURCE_FIELD_NUMBER, W.LEN)  # dataset, row, offset
        at = W.put_varints(out, at + 1, p["source"])
        out[at] = W.key(_SOURCE.DATASET_FIELD_NUMBER, W.LEN)
        k, r = len(self.dataset), len(at)
        at = W.put_varints(out, at + 1, np.full(r, k))
        text = np.tile(np.frombuffer(self.dataset, np.uint8), r)
        W.put_bytes(out, at, text, np.full(r, k, np.int64))
        out[at + k] = W.key(_SOURCE.ROW_FIELD_NUMBER, W.VARINT)
        at = W.put_varints(out, at + k + 1, self.row)
        out[at] = W.key(_SOURCE.OFFSET_FIELD_NUMBER, W.VARINT)
        at = W.put_varints(out, at + 1, self.offset)
        out[at] = W.key(_EXAMPLE.QUALIFYING_TOKEN_INDEX_FIELD_NUMBER, W.VARINT)
        W.put_varints(out, at + 1, self.qualifying)


@dataclass(slots=True)
class GroupHeads:
    """Each feature's quantile groups (``FeatureDashboard.quantile_groups``, field 3) up to
    their examples: key, length and the three bin fields, highest group first."""

    feature: np.ndarray  # [G] place in the chunk
    section: np.ndarray  # [G] 1 + (groups - 1 - g)
    bins: np.ndarray  # [G, 3] bin_min, bin_max, bin_contains
    width: int  # sections per feature at most
    body: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, groups: list[tuple[list[float], list[int]]]) -> GroupHeads:
        feature, section, bins = [], [], []
        for i, (edges, counts) in enumerate(groups):
            nnz = sum(counts)
            for k in reversed(range(len(counts))):
                feature.append(i)
                section.append(len(counts) - k)
                bins.append((edges[k], edges[k + 1], counts[k] / nnz))
        return cls(
            np.array(feature, np.int64),
            np.array(section, np.int64),
            np.array(bins, np.float64).reshape(-1, 3),
            1 + max((len(counts) for _, counts in groups), default=0),
        )

    def sizes(self, c: np.ndarray, section: np.ndarray, example_sizes: np.ndarray) -> np.ndarray:
        """Bytes of each head; a group's length counts its examples (feature ``c``, in the
        chunk, and ``section`` of each)."""
        n_keys = (max(int(c.max(initial=-1)), int(self.feature.max(initial=-1))) + 1) * self.width
        inside = np.bincount(c * self.width + section, weights=example_sizes, minlength=n_keys)
        self.body = 15 + inside[self.feature * self.width + self.section].astype(np.int64)
        return 1 + W.varint_sizes(self.body) + 15

    def write(self, out: np.ndarray, at: np.ndarray) -> None:
        out[at] = W.key(_DASHBOARD.QUANTILE_GROUPS_FIELD_NUMBER, W.LEN)
        at = W.put_varints(out, at + 1, self.body)
        bins = (
            _GROUP.BIN_MIN_FIELD_NUMBER,
            _GROUP.BIN_MAX_FIELD_NUMBER,
            _GROUP.BIN_CONTAINS_FIELD_NUMBER,
        )
        for j, bin_field in enumerate(bins):
            out[at + 5 * j] = W.key(bin_field, W.I32)
            W.put_float32s(out, at + 5 * j + 1, self.bins[:, j])
