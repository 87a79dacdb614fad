"""segdl's trailer on aria2's control file: it round-trips, aria2c's own files read as
trusted without validators, and any damage to a sealed file is caught."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segdl.core.controlfile import ControlFile, ControlFileError
from segdl.core.pieces import PieceMap
from segdl.core.resume import Validators, control_from_pieces
from segdl.core.trailer import MAGIC, seal, unseal

KIB = 1024


@st.composite
def controls(draw: st.DrawFn) -> ControlFile:
    piece_length = draw(st.sampled_from([16 * KIB, 64 * KIB, 1024 * KIB]))
    total = draw(st.integers(min_value=0, max_value=30 * piece_length))
    pieces = PieceMap(total, piece_length)
    num = pieces.num_pieces
    done = draw(st.sets(st.integers(0, num - 1))) if num else set()
    partial = {}
    for index in draw(st.sets(st.integers(0, num - 1), max_size=4)) if num else ():
        blocks = pieces.piece_size(index) // (16 * KIB)
        if index not in done and blocks > 1:
            partial[index] = draw(st.integers(1, blocks - 1)) * 16 * KIB
    return control_from_pieces(PieceMap(total, piece_length, done=done, partial=partial))


texts = st.one_of(st.none(), st.text(max_size=40))
validators = st.builds(
    Validators,
    url=st.text(max_size=200),
    size=st.one_of(st.none(), st.integers(min_value=0, max_value=2**50)),
    etag=texts,
    last_modified=texts,
)


@given(controls(), validators)
def test_a_sealed_control_file_round_trips(control: ControlFile, saved: Validators) -> None:
    data = seal(control, saved)
    assert data.startswith(control.encode())
    assert data.endswith(MAGIC)
    assert unseal(data) == (control, saved)
    # What aria2c reads: the same control file, the trailer ignored.
    assert ControlFile.decode(data) == control


@given(controls())
def test_aria2cs_own_file_has_no_validators(control: ControlFile) -> None:
    assert unseal(control.encode()) == (control, None)


@given(controls(), validators, st.data())
def test_every_bit_flip_in_a_sealed_file_is_caught(
    control: ControlFile, saved: Validators, data: st.DataObject
) -> None:
    """Anywhere: in the control file (a claimed piece never fetched), in the validators (a
    changed remote file not noticed), in the length, digest or magic."""
    sealed = bytearray(seal(control, saved))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(ControlFileError):
        unseal(bytes(sealed))


@given(controls(), validators)
def test_a_cut_trailer_is_caught(control: ControlFile, saved: Validators) -> None:
    sealed = seal(control, saved)
    plain = len(control.encode())
    for end in range(len(sealed)):
        if end == plain:
            # Exactly aria2's bytes: what aria2c itself would have written.
            assert unseal(sealed[:end]) == (control, None)
            continue
        with pytest.raises(ControlFileError):
            unseal(sealed[:end])


@given(controls(), validators, st.binary(min_size=1, max_size=64))
def test_bytes_after_a_control_file_are_damage(
    control: ControlFile, saved: Validators, garbage: bytes
) -> None:
    """aria2c writes nothing after its fields: trailing bytes that are not an intact trailer
    mean damage, sealed or not."""
    for data in (control.encode() + garbage, seal(control, saved) + garbage):
        if data.endswith(MAGIC):
            continue  # garbage that happens to end like a trailer: the digest decides
        with pytest.raises(ControlFileError):
            unseal(data)
