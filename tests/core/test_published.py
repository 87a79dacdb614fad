"""Judging the file at a model's name against segdl's record of what it published there."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from segdl.core.published import FileIdentity, PublishedRecord, judge
from segdl.core.resume import FinalState, Validators

URL = "https://cdn.example/m.safetensors"
V1 = Validators(url=URL, size=100, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
FILE = FileIdentity(size=100, mtime_ns=1_700_000_000_000_000_000, inode=42)
SHA = "ab" * 32


def test_no_record_or_another_file_is_unknown() -> None:
    assert judge(None, FILE, V1, None) is FinalState.UNKNOWN
    record = PublishedRecord(FILE, V1, SHA)
    for other in (
        FileIdentity(101, FILE.mtime_ns, FILE.inode),  # grown
        FileIdentity(100, FILE.mtime_ns + 1, FILE.inode),  # edited in place
        FileIdentity(100, FILE.mtime_ns, 43),  # replaced
    ):
        assert judge(record, other, V1, None) is FinalState.UNKNOWN
        assert judge(record, other, V1, SHA) is FinalState.UNKNOWN


def test_a_published_sha256_decides() -> None:
    record = PublishedRecord(FILE, V1, SHA)
    changed = Validators(url=URL, size=100, etag='"v2"', last_modified=None)
    # The site's digest wins over validators either way.
    assert judge(record, FILE, changed, SHA.upper()) is FinalState.CURRENT
    assert judge(record, FILE, V1, "cd" * 32) is FinalState.OUTDATED
    # A digest expected but none recorded: only hashing the file can tell.
    assert judge(PublishedRecord(FILE, V1, None), FILE, V1, SHA) is FinalState.UNKNOWN


def test_validators_decide_without_a_digest() -> None:
    record = PublishedRecord(FILE, V1)
    assert judge(record, FILE, V1, None) is FinalState.CURRENT
    new_tag = Validators(url=URL, size=100, etag='"v2"', last_modified=V1.last_modified)
    assert judge(record, FILE, new_tag, None) is FinalState.OUTDATED
    new_size = Validators(url=URL, size=99, etag='"v1"', last_modified=None)
    assert judge(record, FILE, new_size, None) is FinalState.OUTDATED
    elsewhere = Validators(url=URL + "2", size=100, etag='"v1"', last_modified=None)
    assert judge(record, FILE, elsewhere, None) is FinalState.OUTDATED
    # A server that names no version: nothing says it is the same file, nor another.
    bare = Validators(url=URL, size=100, etag=None, last_modified=None)
    assert judge(PublishedRecord(FILE, bare), FILE, bare, None) is FinalState.UNKNOWN


versions = st.builds(
    Validators,
    url=st.sampled_from([URL, URL + "?"]),
    size=st.one_of(st.none(), st.sampled_from([99, 100])),
    etag=st.sampled_from([None, '"v1"', 'W/"v1"', '"v2"']),
    last_modified=st.sampled_from([None, "Mon", "Tue"]),
)
identities = st.builds(
    FileIdentity,
    size=st.sampled_from([99, 100]),
    mtime_ns=st.sampled_from([1, 2]),
    inode=st.sampled_from([7, 8]),
)
digests = st.one_of(st.none(), st.sampled_from([SHA, "cd" * 32]))


@given(identities, versions, digests, identities, versions, digests)
def test_current_only_with_proof(
    recorded_identity: FileIdentity,
    recorded: Validators,
    recorded_sha: str | None,
    found: FileIdentity,
    current: Validators,
    expected: str | None,
) -> None:
    """CURRENT means: the very file segdl published, and either the expected digest is the
    one recorded, or the validators surely name the recorded version."""
    record = PublishedRecord(recorded_identity, recorded, recorded_sha)
    verdict = judge(record, found, current, expected)
    if verdict is FinalState.CURRENT:
        assert found == recorded_identity
        if expected is not None:
            assert recorded_sha == expected
        else:
            assert recorded.identifies(current)
    if verdict is FinalState.OUTDATED:
        assert found == recorded_identity
